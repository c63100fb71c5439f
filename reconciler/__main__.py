"""``python -m reconciler``: the same entry point as the ``flannel-reconciler`` script
(``reconciler.cli.entry``, which answers ``--version`` before importing the commands)."""
import sys

from reconciler.cli.entry import main

sys.exit(main())
