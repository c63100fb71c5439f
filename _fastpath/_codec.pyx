# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled versions of the hot decoders of ``reconciler.kernel.netlink.wire``.

Each function here is a line-by-line port of the pure one of the same name
and must give *identical* results, exceptions included (``DecodeError`` on
broken framing, a skipped message on a broken message): the pure module is
the specification, ``tests/test_wire.py`` the proof.  Only the byte walking
and the text formatting (dotted quads, MACs) run in C; the values are the
same ``reconciler.core.model`` objects.  IPv6 text and the ``ours``/``names``
lookups call back into Python, exactly as the pure code does.
"""
from libc.stdint cimport int32_t, uint16_t, uint32_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
from cpython.object cimport PyObject_GenericSetAttr

from reconciler.core.model import Fdb, Neigh, Route
from reconciler.kernel.netlink import wire

from . import _shape

cdef object DecodeError = wire.DecodeError
cdef object ip_text = wire.ip_text
cdef object net6_text = wire.net6_text
cdef object split_nets = wire.split_nets
cdef object FE80_64 = wire._FE80_64
cdef object IPv6Network = wire.ipaddress.IPv6Network

# The values are built without their dataclass ``__init__`` (a Python call setting each slot
# through ``object.__setattr__``, the largest share of decoding a dump): a new instance and
# its slots set from C, which is what that ``__init__`` does.  Only while the class is what
# this code expects -- these fields in this order, slots, no ``__post_init__`` -- else the
# class is called as before.  tests/test_wire.py compares every field, compared or not.
cdef object object_new = object.__new__


cdef tuple NEIGH_FIELDS = _shape.NEIGH_FIELDS
cdef tuple FDB_FIELDS = _shape.FDB_FIELDS
cdef tuple ROUTE_FIELDS = _shape.ROUTE_FIELDS
cdef object plain = _shape.plain       # (``_fastpath/_shape.py``)
cdef bint FAST_NEIGH = plain(Neigh, NEIGH_FIELDS)
cdef bint FAST_FDB = plain(Fdb, FDB_FIELDS)
cdef bint FAST_ROUTE = plain(Route, ROUTE_FIELDS)
#: Whether each class is built without its ``__init__`` (for the tests).
BUILT_DIRECTLY = {"neigh": FAST_NEIGH, "fdb": FAST_FDB, "route": FAST_ROUTE}


cdef object build(cls, bint direct, tuple names, tuple values):
    """``cls(*values)``: its slots set from C when ``direct``, else through its ``__init__``."""
    if not direct:
        return cls(*values)
    cdef object o = object_new(cls)
    cdef Py_ssize_t i
    for i in range(len(names)):
        PyObject_GenericSetAttr(o, names[i], values[i])
    return o



cdef enum:
    NLMSG_ERROR = 2
    NLMSG_DONE = 3
    NLM_F_DUMP_INTR = 0x10
    NLM_F_CAPPED = 0x100
    NLM_F_ACK_TLVS = 0x200
    NLA_TYPE_MASK = 0x3FFF
    NATTR = 32
    RTM_NEWROUTE = 24
    RTM_NEWNEIGH = 28
    RTA_DST = 1
    RTA_OIF = 4
    RTA_GATEWAY = 5
    RTA_PRIORITY = 6
    RTA_MULTIPATH = 9
    RTA_TABLE = 15
    RTA_NH_ID = 30
    RT_TABLE_MAIN = 254
    RTN_UNICAST = 1
    RTN_BLACKHOLE = 6
    RTNH_F_ONLINK = 4
    RTM_F_CLONED = 0x200
    RTPROT_RECONCILER = 73
    AF_INET = 2
    AF_INET6 = 10
    AF_BRIDGE = 7
    NDA_DST = 1
    NDA_LLADDR = 2
    NUD_PERMANENT = 0x80
    NTF_SELF = 0x02
    NTF_PROXY = 0x08


cdef inline uint32_t rd32(const unsigned char* p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef inline uint16_t rd16(const unsigned char* p) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return v


cdef inline int32_t rdi32(const unsigned char* p) noexcept nogil:
    cdef int32_t v
    memcpy(&v, p, 4)
    return v


cdef int parse_attrs(const unsigned char* p, Py_ssize_t a, Py_ssize_t end,
                     Py_ssize_t* start, Py_ssize_t* stop) noexcept nogil:
    """Spans of attribute types < NATTR in p[a:end] (start -1: absent); -1 if one overruns."""
    cdef Py_ssize_t alen
    cdef unsigned int atype
    cdef int k
    for k in range(NATTR):
        start[k] = -1
        stop[k] = -1
    while end - a >= 4:
        alen = rd16(p + a)
        atype = rd16(p + a + 2) & NLA_TYPE_MASK
        if alen < 4 or alen > end - a:
            return -1
        if atype < NATTR:
            start[atype] = a + 4
            stop[atype] = a + alen
        a += (alen + 3) & ~3
    return 0


cdef inline Py_ssize_t check_header(const unsigned char* p, Py_ssize_t n, Py_ssize_t off) except -1:
    """The length of the message at ``off``; DecodeError exactly as ``wire._messages`` words it."""
    cdef uint32_t mlen
    if n - off < 16:
        raise DecodeError(f"truncated netlink header at offset {off} ({n - off} bytes left)")
    mlen = rd32(p + off)
    if mlen < 16 or mlen > <uint32_t>(n - off):
        raise DecodeError(f"netlink message at offset {off} claims {mlen} bytes, {n - off} left")
    return mlen


cdef str quad(const unsigned char* q):
    cdef char out[16]
    cdef int i, j = 0
    cdef unsigned int b
    for i in range(4):
        b = q[i]
        if b >= 100:
            out[j] = 48 + b // 100
            j += 1
        if b >= 10:
            out[j] = 48 + (b // 10) % 10
            j += 1
        out[j] = 48 + b % 10
        j += 1
        if i < 3:
            out[j] = 46
            j += 1
    return (<char*>out)[:j].decode("ascii")


cdef str hexcolon(const unsigned char* q, Py_ssize_t n):
    cdef bytes raw = q[:n]
    return raw.hex(":")


cdef str mac6(const unsigned char* q):
    cdef char out[17]
    cdef const char* digits = b"0123456789abcdef"
    cdef int i
    for i in range(6):
        out[3 * i] = digits[q[i] >> 4]
        out[3 * i + 1] = digits[q[i] & 15]
        if i < 5:
            out[3 * i + 2] = 58
    return (<char*>out)[:17].decode("ascii")


cdef inline str lladdr_text(const unsigned char* q, Py_ssize_t n):
    return mac6(q) if n == 6 else hexcolon(q, n)


cdef inline str addr_text(const unsigned char* q, Py_ssize_t n):
    return quad(q) if n == 4 else ip_text(q[:n])


def decode_routes(buf, names, ours, nets=()):
    """See ``wire.decode_routes``."""
    cdef const unsigned char[::1] view = bytes(buf)
    cdef Py_ssize_t n = view.shape[0]
    cdef const unsigned char* p = &view[0] if n else NULL
    cdef Py_ssize_t off = 0, mlen, end, alen, off_body
    cdef Py_ssize_t start[NATTR]
    cdef Py_ssize_t stop[NATTR]
    cdef unsigned int family, dst_len, table, proto, rtype, k, nv4
    cdef uint32_t flags, metric, oif, value, mask, nhid
    cdef bint has_oif, keep
    cdef unsigned char packed[4]
    cdef uint32_t* v4addr = NULL
    cdef uint32_t* v4mask = NULL
    cdef unsigned int* v4plen = NULL
    cdef list out = []
    v4nets, v6nets = split_nets(nets)
    nv4 = len(v4nets)
    v4addr = <uint32_t*>malloc((nv4 + 1) * sizeof(uint32_t))
    v4mask = <uint32_t*>malloc((nv4 + 1) * sizeof(uint32_t))
    v4plen = <unsigned int*>malloc((nv4 + 1) * sizeof(unsigned int))
    if v4addr == NULL or v4mask == NULL or v4plen == NULL:
        free(v4addr); free(v4mask); free(v4plen)
        raise MemoryError()
    try:
        for k in range(nv4):
            v4addr[k], v4mask[k], v4plen[k] = v4nets[k]
        while off < n:
            mlen = check_header(p, n, off)
            end = off + mlen
            if rd16(p + off + 4) != RTM_NEWROUTE or mlen < 28:
                off += (mlen + 3) & ~3
                continue
            off_body = off
            off += (mlen + 3) & ~3
            family = p[off_body + 16]
            dst_len = p[off_body + 17]
            table = p[off_body + 20]
            proto = p[off_body + 21]
            rtype = p[off_body + 23]
            flags = rd32(p + off_body + 24)
            if family == AF_INET:
                alen = 4
            elif family == AF_INET6:
                alen = 16
            else:
                continue
            if parse_attrs(p, off_body + 28, end, start, stop) < 0:
                continue
            if start[RTA_TABLE] >= 0:
                if stop[RTA_TABLE] - start[RTA_TABLE] != 4:
                    continue
                if rd32(p + start[RTA_TABLE]) != 0:
                    table = rd32(p + start[RTA_TABLE])
            if table != RT_TABLE_MAIN or (rtype != RTN_UNICAST and rtype != RTN_BLACKHOLE) or flags & RTM_F_CLONED:
                continue
            if start[RTA_MULTIPATH] >= 0 and stop[RTA_MULTIPATH] > start[RTA_MULTIPATH]:
                continue
            has_oif = False
            oif = 0
            if start[RTA_OIF] >= 0:
                if stop[RTA_OIF] - start[RTA_OIF] != 4:
                    continue
                has_oif = True
                oif = rd32(p + start[RTA_OIF])
            metric = 0
            if start[RTA_PRIORITY] >= 0:
                if stop[RTA_PRIORITY] - start[RTA_PRIORITY] != 4:
                    continue
                metric = rd32(p + start[RTA_PRIORITY])
            if start[RTA_DST] >= 0 and stop[RTA_DST] - start[RTA_DST] != alen:
                continue
            if dst_len > alen * 8:
                continue
            gateway = None
            if start[RTA_GATEWAY] >= 0:
                if stop[RTA_GATEWAY] - start[RTA_GATEWAY] != alen:
                    continue
                gateway = addr_text(p + start[RTA_GATEWAY], alen)
            oif_obj = oif if has_oif else None
            if alen == 4:
                value = 0
                if start[RTA_DST] >= 0:
                    value = (<uint32_t>p[start[RTA_DST]] << 24) | (<uint32_t>p[start[RTA_DST] + 1] << 16) | \
                            (<uint32_t>p[start[RTA_DST] + 2] << 8) | <uint32_t>p[start[RTA_DST] + 3]
                mask = 0 if dst_len == 0 else (<uint32_t>0xFFFFFFFF) << (32 - dst_len)
                value &= mask
                keep = proto == RTPROT_RECONCILER
                if not keep:
                    for k in range(nv4):
                        if dst_len >= v4plen[k] and (value & v4mask[k]) == v4addr[k]:
                            keep = True
                            break
                if not keep and oif_obj not in ours:
                    continue
                packed[0] = value >> 24
                packed[1] = (value >> 16) & 255
                packed[2] = (value >> 8) & 255
                packed[3] = value & 255
                text = f"{quad(packed)}/{dst_len}"
            else:
                dst = p[start[RTA_DST]:stop[RTA_DST]] if start[RTA_DST] >= 0 else bytes(16)
                net = IPv6Network((dst, dst_len), strict=False)
                if oif_obj not in ours and proto != RTPROT_RECONCILER and not any(net.subnet_of(m) for m in v6nets):
                    continue
                if net == FE80_64:
                    continue
                text = str(net)
            nhid = 0
            if start[RTA_NH_ID] >= 0:
                if stop[RTA_NH_ID] - start[RTA_NH_ID] != 4:
                    continue
                nhid = rd32(p + start[RTA_NH_ID])
            out.append(build(Route, FAST_ROUTE, ROUTE_FIELDS,
                             (text, gateway, names.get(oif_obj) if oif else None, bool(flags & RTNH_F_ONLINK),
                              metric, proto, nhid, "blackhole" if rtype == RTN_BLACKHOLE else "unicast")))
    finally:
        free(v4addr)
        free(v4mask)
        free(v4plen)
    return out


cdef int neigh_fields(const unsigned char* p, Py_ssize_t off, Py_ssize_t end, Py_ssize_t* start,
                      Py_ssize_t* stop) noexcept nogil:
    """0 if the ndmsg at ``off`` parses (attributes in start/stop), -1 if it is malformed."""
    cdef Py_ssize_t dlen
    if end - off < 28:
        return -1
    if parse_attrs(p, off + 28, end, start, stop) < 0:
        return -1
    if start[NDA_DST] >= 0:
        dlen = stop[NDA_DST] - start[NDA_DST]
        if dlen != 4 and dlen != 16:
            return -1
    return 0


def decode_neighs(buf, ifindex, name):
    """See ``wire.decode_neighs``."""
    cdef const unsigned char[::1] view = bytes(buf)
    cdef Py_ssize_t n = view.shape[0]
    cdef const unsigned char* p = &view[0] if n else NULL
    cdef Py_ssize_t off = 0, mlen, end, at
    cdef Py_ssize_t start[NATTR]
    cdef Py_ssize_t stop[NATTR]
    cdef unsigned int family, state, flags
    cdef long long idx, want = ifindex
    cdef list out = []
    while off < n:
        mlen = check_header(p, n, off)
        end = off + mlen
        at = off
        off += (mlen + 3) & ~3
        if rd16(p + at + 4) != RTM_NEWNEIGH:
            continue
        if neigh_fields(p, at, end, start, stop) < 0:
            continue
        family = p[at + 16]
        idx = rdi32(p + at + 20)
        state = rd16(p + at + 24)
        flags = p[at + 26]
        if (idx != want or not state & NUD_PERMANENT or flags & NTF_PROXY
                or (family != AF_INET and family != AF_INET6)
                or start[NDA_DST] < 0 or start[NDA_LLADDR] < 0 or stop[NDA_LLADDR] == start[NDA_LLADDR]):
            continue
        out.append(build(Neigh, FAST_NEIGH, NEIGH_FIELDS,
                         (name, addr_text(p + start[NDA_DST], stop[NDA_DST] - start[NDA_DST]),
                          lladdr_text(p + start[NDA_LLADDR], stop[NDA_LLADDR] - start[NDA_LLADDR]))))
    return out


def decode_fdb(buf, ifindex, name):
    """See ``wire.decode_fdb``."""
    cdef const unsigned char[::1] view = bytes(buf)
    cdef Py_ssize_t n = view.shape[0]
    cdef const unsigned char* p = &view[0] if n else NULL
    cdef Py_ssize_t off = 0, mlen, end, at
    cdef Py_ssize_t start[NATTR]
    cdef Py_ssize_t stop[NATTR]
    cdef unsigned int family, state, flags
    cdef long long idx, want = ifindex
    cdef list out = []
    while off < n:
        mlen = check_header(p, n, off)
        end = off + mlen
        at = off
        off += (mlen + 3) & ~3
        if rd16(p + at + 4) != RTM_NEWNEIGH:
            continue
        if neigh_fields(p, at, end, start, stop) < 0:
            continue
        family = p[at + 16]
        idx = rdi32(p + at + 20)
        state = rd16(p + at + 24)
        flags = p[at + 26]
        if (idx != want or family != AF_BRIDGE or not flags & NTF_SELF or not state & NUD_PERMANENT
                or start[NDA_DST] < 0 or start[NDA_LLADDR] < 0 or stop[NDA_LLADDR] == start[NDA_LLADDR]):
            continue
        out.append(build(Fdb, FAST_FDB, FDB_FIELDS,
                         (name, lladdr_text(p + start[NDA_LLADDR], stop[NDA_LLADDR] - start[NDA_LLADDR]),
                          addr_text(p + start[NDA_DST], stop[NDA_DST] - start[NDA_DST]))))
    return out


cdef object extack(const unsigned char* p, Py_ssize_t off, Py_ssize_t end, unsigned int mflags):
    cdef Py_ssize_t a
    cdef Py_ssize_t start[NATTR]
    cdef Py_ssize_t stop[NATTR]
    if not mflags & NLM_F_ACK_TLVS or end - off < 36:
        return None
    if mflags & NLM_F_CAPPED:
        a = off + 36
    else:
        a = off + 20 + ((<Py_ssize_t>rd32(p + off + 20) + 3) & ~3)
    if a > end:
        return None
    if parse_attrs(p, a, end, start, stop) < 0 or start[1] < 0:
        return None
    text = p[start[1]:stop[1]].split(b"\0", 1)[0].decode(errors="replace")
    return text or None


def decode_acks(buf):
    """See ``wire.decode_acks``."""
    cdef const unsigned char[::1] view = bytes(buf)
    cdef Py_ssize_t n = view.shape[0]
    cdef const unsigned char* p = &view[0] if n else NULL
    cdef Py_ssize_t off = 0, mlen, at
    cdef unsigned int mflags
    cdef list out = []
    while off < n:
        mlen = check_header(p, n, off)
        at = off
        off += (mlen + 3) & ~3
        if rd16(p + at + 4) != NLMSG_ERROR or mlen < 20:
            continue
        mflags = rd16(p + at + 6)
        out.append((rd32(p + at + 8), -<long long>rdi32(p + at + 16), extack(p, at, at + mlen, mflags)))
    return out


def scan_dump(buf):
    """See ``wire.scan_dump``."""
    cdef const unsigned char[::1] view = bytes(buf)
    cdef Py_ssize_t n = view.shape[0]
    cdef const unsigned char* p = &view[0] if n else NULL
    cdef Py_ssize_t off = 0, mlen, at
    cdef unsigned int mflags, mtype
    cdef bint done = False, intr = False
    cdef long long code = 0, status
    text = None
    while off < n:
        mlen = check_header(p, n, off)
        at = off
        off += (mlen + 3) & ~3
        mtype = rd16(p + at + 4)
        mflags = rd16(p + at + 6)
        if mflags & NLM_F_DUMP_INTR:
            intr = True
        if mtype == NLMSG_DONE:
            done = True
            if mlen >= 20:
                status = rdi32(p + at + 16)
                if status < 0:
                    code = -status
        elif mtype == NLMSG_ERROR:
            done = True
            if mlen >= 20:
                code = -<long long>rdi32(p + at + 16)
                text = extack(p, at, at + mlen, mflags)
    return done, intr, code, text


DECODERS = {"route": decode_routes, "neigh": decode_neighs, "fdb": decode_fdb, "acks": decode_acks,
            "scan": scan_dump}


def decode_dump(kind, buf, *context):
    """``DECODERS[kind](buf, *context)``, as ``wire.decode_dump``."""
    return DECODERS[kind](buf, *context)
