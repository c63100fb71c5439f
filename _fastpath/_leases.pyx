# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled parser for the lease values flanneld writes, byte for byte.

``parse_canonical(key, value, etcd_lease)`` returns the ``Lease`` that
``reconciler.core.leases.parse_lease`` returns for the same arguments, or None
when the input is not in the one form flanneld writes for an IPv4 VXLAN lease
(docs/flannel-formats.md section 3)::

    key    a.b.c.d-LEN
    value  {"PublicIP":"a.b.c.d","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":N,"VtepMAC":"xx:xx:xx:xx:xx:xx"}}

Everything else -- dual stack, other field orders, spacing, escapes, upper
case names, duplicates, any value the pure parser would refuse -- gives None,
and the caller runs the pure parser, which stays the specification.  So the
two can only differ if this module accepts something the pure one would
parse differently: ``tests/test_leases_fast.py`` holds them equal on canonical,
random and hostile input.

``peer_entries`` builds the three values a peer's lease gives in the onlink route
layout (``reconciler.core.desired._overlay_entries``); it lives here, not in the
netlink codec, because the pure core that calls it loads this module alone.
"""
from ipaddress import IPv4Network

from cpython.object cimport PyObject_GenericSetAttr

from reconciler.core.leases import Lease
from reconciler.core.model import Fdb, Neigh, Route

from . import _shape

# The Lease is built without its dataclass ``__init__`` (a Python call setting each of eleven
# slots through ``object.__setattr__``: a third of this parser's time): a new instance and its
# slots set from C, which is what that ``__init__`` does.  Only while the class is what this
# code expects -- these fields in this order, slots, no ``__post_init__`` -- else the class is
# called as before (``_fastpath/_codec.pyx`` builds the dump's values the same way).
cdef object object_new = object.__new__
cdef tuple LEASE_FIELDS = ("key", "subnet", "ipv6_subnet", "public_ip", "public_ipv6", "backend_type", "vni",
                           "vtep_mac", "v6_vni", "v6_vtep_mac", "etcd_lease")
cdef bint FAST_LEASE = _shape.plain(Lease, LEASE_FIELDS)
#: Whether the Lease is built without its ``__init__`` (for the tests).
BUILT_DIRECTLY = FAST_LEASE


cdef tuple NEIGH_FIELDS = _shape.NEIGH_FIELDS
cdef tuple FDB_FIELDS = _shape.FDB_FIELDS
cdef tuple ROUTE_FIELDS = _shape.ROUTE_FIELDS
cdef bint FAST_ENTRIES = (_shape.plain(Neigh, NEIGH_FIELDS) and _shape.plain(Fdb, FDB_FIELDS)
                          and _shape.plain(Route, ROUTE_FIELDS))
#: Whether ``peer_entries`` builds its values without their ``__init__`` (for the tests).
ENTRIES_BUILT_DIRECTLY = FAST_ENTRIES


cdef object _build(cls, tuple names, tuple values):
    cdef object o = object_new(cls)
    cdef Py_ssize_t i
    for i in range(len(names)):
        PyObject_GenericSetAttr(o, names[i], values[i])
    return o


def peer_entries(dev, gw, mac, public_ip, dst, metric):
    """``(Neigh(dev, gw, mac), Fdb(dev, mac, public_ip), Route(dst, gw, dev, onlink=True, metric=metric))``:
    a peer's entries in the onlink route layout, as ``reconciler.core.desired._overlay_entries``
    makes them (the specification; ``tests/test_properties.py`` holds the two equal, field by field)."""
    if not FAST_ENTRIES:
        return (Neigh(dev, gw, mac), Fdb(dev, mac, public_ip), Route(dst, gw, dev, True, metric))
    return (_build(Neigh, NEIGH_FIELDS, (dev, gw, mac)), _build(Fdb, FDB_FIELDS, (dev, mac, public_ip)),
            _build(Route, ROUTE_FIELDS, (dst, gw, dev, True, metric, None, 0, "unicast")))


cdef object _lease(tuple values):
    if not FAST_LEASE:
        return Lease(*values)
    return _build(Lease, LEASE_FIELDS, values)

cdef str _HEAD = '{"PublicIP":"'
cdef str _MID = '","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":'
cdef str _MAC = ',"VtepMAC":"'
cdef str _TAIL = '"}}'
cdef str _HEX = "0123456789abcdef"


cdef long _quad(str text, Py_ssize_t start, Py_ssize_t end):
    """A dotted quad in text[start:end] with no leading zeros, as an integer; -1 if it is not one."""
    cdef long value = 0
    cdef long octet = 0
    cdef int digits = 0
    cdef int dots = 0
    cdef Py_UCS4 c
    cdef Py_UCS4 first = 0
    cdef Py_ssize_t i
    if end - start < 7 or end - start > 15:
        return -1
    for i in range(start, end):
        c = text[i]
        if c == '.':
            if digits == 0 or dots == 3:
                return -1
            value = (value << 8) | octet
            octet = 0
            digits = 0
            dots += 1
        elif '0' <= c <= '9':
            if digits == 0:
                first = c
            elif first == '0' or digits == 3:
                return -1
            octet = octet * 10 + (<long>c - 48)
            if octet > 255:
                return -1
            digits += 1
        else:
            return -1
    if digits == 0 or dots != 3:
        return -1
    return (value << 8) | octet


cdef inline int _hexval(Py_UCS4 c):
    if '0' <= c <= '9':
        return <int>c - 48
    if 'a' <= c <= 'f':
        return <int>c - 87
    if 'A' <= c <= 'F':
        return <int>c - 55
    return -1


def parse_canonical(str key, str value, etcd_lease=0):
    """The ``Lease`` the pure parser gives, for flanneld's own IPv4 form; None for anything else."""
    cdef Py_ssize_t n = len(key)
    cdef Py_ssize_t dash = key.find("-")
    cdef long addr, plen, pub, vni
    cdef Py_ssize_t i, p, q, m
    cdef int hi, lo, first_byte, any_set, upper
    cdef Py_UCS4 c
    if dash < 0 or n - dash - 1 < 1 or n - dash - 1 > 2:
        return None
    addr = _quad(key, 0, dash)
    if addr < 0:
        return None
    plen = 0
    for i in range(dash + 1, n):
        c = key[i]
        if not ('0' <= c <= '9'):
            return None
        plen = plen * 10 + (<long>c - 48)
    if plen > 31 or (n - dash - 1 == 2 and key[dash + 1] == '0'):
        return None
    # Host bits set: the pure parser refuses it, with its own message.
    if (addr & ((<long>1 << (32 - plen)) - 1)) != 0:
        return None

    if not value.startswith(_HEAD):
        return None
    p = len(_HEAD)
    q = value.find('"', p)
    if q < 0:
        return None
    pub = _quad(value, p, q)
    if pub < 0:
        return None
    # 0.0.0.0/8 unspecified, 127/8 loopback, 224/4 multicast, the limited broadcast: not a peer.
    if pub == 0 or (pub >> 24) == 127 or (pub >> 28) == 14 or pub == 0xFFFFFFFF:
        return None
    if not value.startswith(_MID, q):
        return None
    p = q + len(_MID)
    vni = 0
    i = p
    while i < len(value):
        c = value[i]
        if not ('0' <= c <= '9'):
            break
        vni = vni * 10 + (<long>c - 48)
        i += 1
        if i - p > 10:
            return None
    if i == p or (i - p > 1 and value[p] == '0') or vni >= 4294967296:
        return None
    if not value.startswith(_MAC, i):
        return None
    m = i + len(_MAC)
    if len(value) != m + 17 + len(_TAIL) or not value.endswith(_TAIL):
        return None
    any_set = 0
    first_byte = 0
    upper = 0
    for i in range(6):
        c = value[m + 3 * i]
        hi = _hexval(c)
        upper |= 'A' <= c <= 'F'
        c = value[m + 3 * i + 1]
        lo = _hexval(c)
        upper |= 'A' <= c <= 'F'
        if hi < 0 or lo < 0 or (i < 5 and value[m + 3 * i + 2] != ':'):
            return None
        if i == 0:
            first_byte = hi * 16 + lo
        any_set |= hi | lo
    if first_byte & 1 or not any_set:
        return None
    # The pure parser gives the MAC in lower case: flanneld's own is that already.
    mac = value[m:m + 17]
    if upper:
        mac = mac.lower()
    return _lease((key, IPv4Network((addr, plen)), None, value[len(_HEAD):q], None, "vxlan", vni, mac, None, None,
                   etcd_lease))
