"""Link events: the decoder on crafted bytes, and the watcher in a real namespace."""
from __future__ import annotations

import struct
import threading
import time

from reconciler.netlink.events import RTM_DELLINK, RTM_NEWLINK, link_names


def _link_msg(mtype: int, name: str | None) -> bytes:
    attrs = b""
    if name is not None:
        payload = name.encode() + b"\0"
        attrs = struct.pack("=HH", 4 + len(payload), 3) + payload
        attrs += b"\0" * ((4 - len(attrs) % 4) % 4)
    mtu = struct.pack("=HHI", 8, 4, 1450)  # IFLA_MTU, before the name
    body = struct.pack("=BxHiII", 0, 1, 7, 0, 0) + mtu + attrs
    return struct.pack("=IHHII", 16 + len(body), mtype, 0, 0, 0) + body


def test_decoder_finds_names_in_a_multi_message_datagram():
    buf = _link_msg(RTM_NEWLINK, "flannel.1") + _link_msg(RTM_DELLINK, "cni0") + _link_msg(RTM_NEWLINK, None)
    assert link_names(buf) == ["flannel.1", "cni0", None]


def test_decoder_ignores_other_messages_and_truncation():
    other = struct.pack("=IHHII", 16, 20, 0, 0, 0)  # RTM_NEWADDR header only
    assert link_names(other + _link_msg(RTM_NEWLINK, "eth0")) == ["eth0"]
    assert link_names(b"\x03\x00") == []


def test_watcher_reports_changes_to_our_devices_only(netns):
    from reconciler.netlink.reference import PyrouteBackend
    from tests.netns import run

    seen: list = []
    stop = threading.Event()
    with PyrouteBackend(netns) as backend:
        t = threading.Thread(target=backend.watch_links, args=({"flannel.1"}, seen.append, stop), daemon=True)
        t.start()
        run(netns, "ip", "link", "add", "flannel.1", "type", "bridge")
        # The watcher binds asynchronously: keep making events (on ours and on
        # another device) until it has reported two, or a bound runs out.
        run(netns, "ip", "link", "add", "other0", "type", "bridge")
        deadline = time.monotonic() + 15
        mtu = 1400
        while len(seen) < 2 and time.monotonic() < deadline:
            mtu = 1300 if mtu == 1400 else 1400
            run(netns, "ip", "link", "set", "other0", "mtu", str(mtu))
            run(netns, "ip", "link", "set", "flannel.1", "mtu", str(mtu))
            time.sleep(0.1)
        stop.set()
        t.join(timeout=5)
    assert not t.is_alive()
    assert len(seen) >= 2 and set(seen) == {"flannel.1"}
