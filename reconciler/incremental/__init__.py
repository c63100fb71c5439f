"""The incremental state the agent keeps between cycles: the lease index, the desired objects per
lease and the believed kernel (tracker). Pure values and bookkeeping; no I/O.
"""
