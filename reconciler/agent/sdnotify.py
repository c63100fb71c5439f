"""systemd's readiness protocol (``sd_notify(3)``) without a dependency.

A unit with ``Type=notify`` is "started" only when the service says
``READY=1``: one datagram of ``KEY=VALUE`` lines on the ``AF_UNIX`` socket
named by ``$NOTIFY_SOCKET`` (a path, or an abstract name written with a
leading ``@``).  flanneld sends ``READY=1`` after writing ``subnet.env``; we
send it at the same point (the first cycle that programmed our devices and
wrote ``subnet.env``), with a ``STATUS=`` line ``systemctl status`` shows,
``WATCHDOG=1`` pings when the unit sets ``WatchdogSec=`` (systemd then
exports ``WATCHDOG_USEC``), and ``STOPPING=1`` on SIGTERM.

Pure where it can be: ``format_message`` builds the bytes and
``socket_address`` parses the variable; ``Notifier`` does the one
``sendto``.  Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op.
A failing send is logged, never raised: readiness reporting must not take
the agent down.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Mapping

__all__ = ["Notifier", "format_message", "socket_address", "watchdog_interval"]

log = logging.getLogger("flannel_reconciler")


def format_message(**fields: str | int) -> bytes:
    """``READY=1\\nSTATUS=...``: one ``KEY=VALUE`` line per field, in the order given.

    A newline inside a value would start a new (forged) field, so values are
    kept to one line.
    """
    lines = []
    for key, value in fields.items():
        text = str(value).replace("\n", " ")
        lines.append(f"{key}={text}")
    return "\n".join(lines).encode()


def socket_address(value: str | None) -> str | bytes | None:
    """The address to ``sendto`` for a ``$NOTIFY_SOCKET`` value, or None.

    ``@name`` is an abstract socket (a leading NUL byte on the wire);
    anything else must be an absolute path.  Other values (``vsock:``
    addresses, relative paths) are not ours to handle: None.
    """
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC``, as
    sd_watchdog_enabled(3) advises; None when no watchdog is asked for (or
    ``WATCHDOG_PID`` names another process)."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1e6 / 2


class Notifier:
    """Sends sd_notify messages to ``$NOTIFY_SOCKET`` (read once, at construction)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.name = env.get("NOTIFY_SOCKET")
        self.address = socket_address(self.name)
        self.watchdog = watchdog_interval(env) if self.address is not None else None
        self.ready_sent = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send one message; True when it was sent."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(format_message(**fields), self.address)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.name, exc)
            return False
        return True

    def ready(self, status: str) -> None:
        """``READY=1`` once (later calls only update STATUS)."""
        if self.ready_sent:
            self.notify(STATUS=status)
            return
        self.ready_sent = self.notify(READY=1, STATUS=status)

    def status(self, status: str) -> None:
        self.notify(STATUS=status)

    def ping(self) -> None:
        """``WATCHDOG=1``: the reconcile loop is alive."""
        if self.watchdog is not None:
            self.notify(WATCHDOG=1)

    def stopping(self, status: str = "stopping; kernel state left in place") -> None:
        self.notify(STOPPING=1, STATUS=status)
