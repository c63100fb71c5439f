"""Which classes the compiled modules may build without their dataclass ``__init__``.

``_codec.pyx`` (the dump's routes, neighbours and FDB entries), ``_leases.pyx`` (a ``Lease``, a
peer's three entries) and ``_encode.pyx`` (an ``OpResult``) make some values as a new instance
with its slots set from C, which is what the generated ``__init__`` does at a fraction of the
cost.  They do so only while the class is what that code expects: exactly these fields in this
order, slots, no ``__post_init__``; otherwise they call the class as usual.  Kept here, once,
in pure Python: it runs once per class, at import.
"""
import dataclasses

__all__ = ["FDB_FIELDS", "NEIGH_FIELDS", "ROUTE_FIELDS", "plain"]

NEIGH_FIELDS = ("dev", "ip", "mac")
FDB_FIELDS = ("dev", "mac", "dst")
ROUTE_FIELDS = ("dst", "gateway", "dev", "onlink", "metric", "protocol", "nhid", "type")


def plain(cls, names: tuple) -> bool:
    """``cls`` is a slotted dataclass with exactly the fields ``names``, in order, and no ``__post_init__``."""
    return (tuple(f.name for f in dataclasses.fields(cls)) == names and "__slots__" in vars(cls)
            and not hasattr(cls, "__post_init__"))
