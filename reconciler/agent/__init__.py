"""The running agent: start-up and lease acquisition, the cycle loop, rule sync, subnet.env, health
and metrics, sd_notify and the instance lock.
"""
