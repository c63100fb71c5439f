"""The pure core: values (model), flanneld's formats (config, leases), desired state, ownership,
the plan and its rendering. Nothing here opens a socket, a file or reads a clock.
"""
