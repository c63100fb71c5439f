"""Optional Cython accelerator for the netlink backend (roadmap: "Next").

Nobody imports a ``.pyx`` module directly: callers check ``AVAILABLE`` and
use the entry points re-exported here, and the pure-Python path must give
identical results (tests hold the two against each other).  Until the
batch codec lands there is no compiled module, and ``AVAILABLE`` is False.
"""
try:  # pragma: no cover - depends on the build
    from ._codec import decode_dump, encode_batch  # type: ignore[import-not-found]

    AVAILABLE = True
except ImportError:
    decode_dump = encode_batch = None
    AVAILABLE = False

__all__ = ["AVAILABLE", "decode_dump", "encode_batch"]
