"""Test-bed helpers for the demo and the tests: namespaces, underlay, CNI.

Uses iproute2 and the CNI plugins as subprocesses with argv lists, never a
shell.  The agent itself never imports this package.

* ``reconciler.tools.lab.netns``: throwaway network namespaces, a bridged veth
  underlay between node namespaces, and ``ip -j``/``bridge -j`` readers;
* ``reconciler.tools.lab.cni``: the real CNI ``bridge`` plugin, configured exactly
  as flannel's CNI plugin configures it from ``subnet.env``.
"""
