"""The etcd seam: the only package that imports the etcd client (store: snapshot, config, leases;
watch: the watch with its liveness probe).
"""
