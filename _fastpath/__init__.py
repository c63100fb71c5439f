"""Optional Cython accelerators: the netlink codec and flanneld's lease values.

Nobody imports a ``.pyx`` module directly: callers check ``AVAILABLE`` and
use the entry points re-exported here, and the pure-Python paths must give
identical results (``tests/test_wire.py`` holds the netlink codec to
``reconciler.kernel.netlink.wire``, value for value and byte for byte, on random
and broken input; ``tests/test_leases_fast.py`` holds the lease parser to
``reconciler.core.leases.parse_lease``).

* ``DECODERS``: ``{"route", "neigh", "fdb", "acks", "scan"}`` -> compiled
  decoder, the same keys and signatures as ``wire.DECODERS``.
* ``decode_dump(kind, buf, *context)``: ``DECODERS[kind](buf, *context)``.
* ``encode_batch(ops, seq0, chunk_bytes)`` and ``match_acks(buf, seq0, count)``:
  the write path, the same signatures and results as ``wire.encode_batch``
  and ``wire.match_acks``; ``fill_ok(results, changes, where, ks)``, the
  successes of an errors-only chunk (``batched._fill_ok``).
* ``parse_canonical(key, value, etcd_lease)``: the ``Lease`` of a value in
  flanneld's own IPv4 form, or None (then the pure parser runs).
* ``peer_entries(dev, gw, mac, public_ip, dst, metric)``: a peer's neighbour, FDB
  entry and onlink route, as ``reconciler.core.desired`` makes them.

The extensions are ``_codec.pyx`` (decoders), ``_encode.pyx`` (the batch
encoder) and ``_leases.pyx`` (lease values), built in place by ``setup.py``
(``pip install -e .`` or ``python setup.py build_ext --inplace``).  When they
are not built, or ``FLANNEL_RECONCILER_NO_CYTHON=1`` is set (at build time it
skips the build; at run time it ignores a built module), ``AVAILABLE`` is
False and the other names are None.

The netlink names are loaded on first use, not when the package is imported:
the pure core imports ``_fastpath._leases`` alone, and must not pay for (or
import) the netlink codec to parse leases.
"""
import os

__all__ = ["AVAILABLE", "DECODERS", "decode_dump", "encode_batch", "fill_ok", "match_acks", "parse_canonical",
           "peer_entries"]

DISABLED = os.environ.get("FLANNEL_RECONCILER_NO_CYTHON") == "1"
_NETLINK = ("AVAILABLE", "DECODERS", "decode_dump", "encode_batch", "match_acks", "fill_ok")


def _load_netlink() -> None:
    names = dict.fromkeys(_NETLINK[1:])
    available = False
    if not DISABLED:
        try:  # pragma: no cover - depends on the build
            from ._codec import DECODERS, decode_dump  # type: ignore[import-not-found]
            from ._encode import encode_batch, fill_ok, match_acks  # type: ignore[import-not-found]

            names = {"DECODERS": DECODERS, "decode_dump": decode_dump, "encode_batch": encode_batch,
                     "match_acks": match_acks, "fill_ok": fill_ok}
            available = True
        except ImportError:
            pass
    globals().update(names, AVAILABLE=available)


def __getattr__(name: str):
    if name in _NETLINK:
        _load_netlink()
        return globals()[name]
    if name in ("parse_canonical", "peer_entries"):
        fns = dict.fromkeys(("parse_canonical", "peer_entries"))
        if not DISABLED:
            try:  # pragma: no cover - depends on the build
                from ._leases import parse_canonical, peer_entries  # type: ignore[import-not-found]

                fns = {"parse_canonical": parse_canonical, "peer_entries": peer_entries}
            except ImportError:
                pass
        globals().update(fns)
        return fns[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
