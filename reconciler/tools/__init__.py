"""Developer tools that the agent never runs: the demo cluster, the namespace lab and the bench.
"""
