"""How a cycle's failed writes are said in the log: one line per failure, except for a missing device.

Writes onto a device that vanished between the believed view and the write
(someone deleted ``flannel.1``: the kernel's FDB-entry deletions can reach
the agent before the link's own) all fail with ENODEV, one per peer.  They
say one thing -- the device is gone -- so they are said once per device,
with a count, and the caller re-reads the kernel instead of believing its
view: at 5,000 peers that is one line instead of 5,000 (README, fault table).
"""
from __future__ import annotations

import errno
from collections import Counter
from typing import Iterable

from reconciler.core.plan import OpResult

__all__ = ["failure_lines"]


def failure_lines(failed: Iterable[OpResult]) -> tuple[list[str], bool]:
    """The log lines for ``failed`` results, and whether a device was missing (dump before retrying)."""
    lines: list[str] = []
    missing: Counter = Counter()
    first: dict[str, str] = {}
    for r in failed:
        dev = getattr(r.change.obj, "dev", None)
        if r.errno == errno.ENODEV and dev is not None:
            missing[dev] += 1
            first.setdefault(dev, r.message)
        else:
            lines.append(r.message)
    for dev, n in sorted(missing.items()):
        lines.append(f"{n} writes onto {dev} failed: the device is gone (ENODEV; first: {first[dev]}); "
                     f"re-reading the kernel and creating it again")
    return lines, bool(missing)
