"""The command line: the flag table (flags), the offline/one-shot commands (main) and the agent's
command (agent).
"""
