"""Optional Cython accelerator for the netlink backend.

Nobody imports a ``.pyx`` module directly: callers check ``AVAILABLE`` and
use the entry points re-exported here, and the pure-Python path
(``reconciler.netlink.wire``) must give identical results (``tests/test_wire.py``
holds the two against each other, value for value, on random and broken
input).

* ``DECODERS``: ``{"route", "neigh", "fdb", "acks", "scan"}`` -> compiled
  decoder, the same keys and signatures as ``wire.DECODERS``.
* ``decode_dump(kind, buf, *context)``: ``DECODERS[kind](buf, *context)``.

The extension is ``_fastpath/_codec.pyx``, built in place by ``setup.py``
(``pip install -e .`` or ``python setup.py build_ext --inplace``).  When it
is not built, or ``FLANNEL_RECONCILER_NO_CYTHON=1`` is set (at build time it
skips the build; at run time it ignores a built module), ``AVAILABLE`` is
False and both names are None.
"""
import os

if os.environ.get("FLANNEL_RECONCILER_NO_CYTHON") == "1":
    DECODERS = decode_dump = None
    AVAILABLE = False
else:
    try:  # pragma: no cover - depends on the build
        from ._codec import DECODERS, decode_dump  # type: ignore[import-not-found]

        AVAILABLE = True
    except ImportError:
        DECODERS = decode_dump = None
        AVAILABLE = False

__all__ = ["AVAILABLE", "DECODERS", "decode_dump"]
