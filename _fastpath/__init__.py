"""Optional Cython accelerator for the netlink backend.

Nobody imports a ``.pyx`` module directly: callers check ``AVAILABLE`` and
use the entry points re-exported here, and the pure-Python path
(``reconciler.kernel.netlink.wire``) must give identical results (``tests/test_wire.py``
holds the two against each other, value for value and byte for byte, on
random and broken input).

* ``DECODERS``: ``{"route", "neigh", "fdb", "acks", "scan"}`` -> compiled
  decoder, the same keys and signatures as ``wire.DECODERS``.
* ``decode_dump(kind, buf, *context)``: ``DECODERS[kind](buf, *context)``.
* ``encode_batch(ops, seq0, chunk_bytes)`` and ``match_acks(buf, seq0, count)``:
  the write path, the same signatures and results as ``wire.encode_batch``
  and ``wire.match_acks``.

The extensions are ``_fastpath/_codec.pyx`` (decoders) and
``_fastpath/_encode.pyx`` (the batch encoder), built in place by ``setup.py``
(``pip install -e .`` or ``python setup.py build_ext --inplace``).  When they
are not built, or ``FLANNEL_RECONCILER_NO_CYTHON=1`` is set (at build time it
skips the build; at run time it ignores a built module), ``AVAILABLE`` is
False and the other names are None.
"""
import os

DECODERS = decode_dump = encode_batch = match_acks = None
AVAILABLE = False
if os.environ.get("FLANNEL_RECONCILER_NO_CYTHON") != "1":
    try:  # pragma: no cover - depends on the build
        from ._codec import DECODERS, decode_dump  # type: ignore[import-not-found]
        from ._encode import encode_batch, match_acks  # type: ignore[import-not-found]

        AVAILABLE = True
    except ImportError:
        DECODERS = decode_dump = encode_batch = match_acks = None
        AVAILABLE = False

__all__ = ["AVAILABLE", "DECODERS", "decode_dump", "encode_batch", "match_acks"]
