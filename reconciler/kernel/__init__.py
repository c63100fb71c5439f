"""The kernel seam: netlink backends (netlink/) and applying a plan through one (apply).
"""
