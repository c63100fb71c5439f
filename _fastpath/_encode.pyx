# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of the batch encoder of ``reconciler.kernel.netlink.wire``: ``encode_batch`` and ``match_acks``.

The pure functions of the same names are the specification; this module
must give *identical* bytes and *identical* errors (``tests/test_wire.py``
holds the two against each other on random ops, IPv4 and IPv6, and on
malformed ones).  It gets there by construction:

* The message layout (``nlmsghdr``, ``rtmsg``/``ndmsg``/``ifaddrmsg``,
  attributes) is written in C, field for field as ``wire.encode_op`` packs
  it.
* Text is parsed in C only in the one spelling that ``inet_pton`` and
  ``ipaddress`` both accept and agree on (dotted quads without leading
  zeros, ``/len`` in canonical decimal, ``xx:xx:xx:xx:xx:xx`` MACs).  Any
  other string -- IPv6, odd spellings, garbage -- goes to the pure helper
  for that field (``wire.ip_packed``, ``network_packed``, ``interface_packed``,
  ``mac_packed``), in the same order as the pure encoder calls them, so the
  same error is raised first, with the same words.
* An op outside the compiled domain (not a tuple of the right length, a
  flag that is not a ``bool``, an integer that is not an ``int`` in range,
  a family mismatch) is handed whole to ``wire.encode_op``.

So the compiled code can only ever *agree* with the pure one on what it
takes, and never has to imitate an error message.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, uint16_t, uint32_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memset

from cpython.object cimport PyObject_GenericSetAttr

from reconciler.core.plan import OpResult
from reconciler.kernel.netlink import wire

from . import _shape
from ._codec import decode_acks

cdef object pure_encode_op = wire.encode_op
cdef object pure_encode_batch = wire.encode_batch
cdef object pure_match_acks = wire.match_acks
cdef object check_seq_range = wire.check_seq_range
cdef object ip_packed = wire.ip_packed
cdef object network_packed = wire.network_packed
cdef object interface_packed = wire.interface_packed
cdef object mac_packed = wire.mac_packed
cdef tuple ENCODE_ERRORS = tuple(wire.ENCODE_ERRORS)


cdef enum:
    # Room for the largest message (an IPv6 route with gateway, oif, priority: 84 bytes).
    MSGMAX = 256
    FIELDMAX = 32
    FALLBACK = -1
    # linux/rtnetlink.h, linux/netlink.h, linux/neighbour.h, linux/if_addr.h
    RTM_NEWADDR = 20
    RTM_DELADDR = 21
    RTM_NEWROUTE = 24
    RTM_DELROUTE = 25
    RTM_NEWNEIGH = 28
    RTM_DELNEIGH = 29
    NLM_F_ACK = 0x4
    F_ACK = 0x5                 # NLM_F_REQUEST | NLM_F_ACK
    F_REPLACE = 0x505           # ... | NLM_F_CREATE | NLM_F_REPLACE
    AF_INET = 2
    AF_BRIDGE = 7
    RT_TABLE_MAIN = 254
    RTPROT_RECONCILER = 73
    RT_SCOPE_UNIVERSE = 0
    RT_SCOPE_LINK = 253
    RT_SCOPE_NOWHERE = 255
    RTN_UNICAST = 1
    RTNH_F_ONLINK = 4
    RTA_DST = 1
    RTA_OIF = 4
    RTA_GATEWAY = 5
    RTA_PRIORITY = 6
    NDA_DST = 1
    NDA_LLADDR = 2
    NUD_PERMANENT = 0x80
    NTF_SELF = 0x02
    IFA_ADDRESS = 1
    IFA_LOCAL = 2


# ------------------------------------------------------------------ domain

cdef inline bint is_u32(object x):
    return type(x) is int and 0 <= x <= 0xFFFFFFFF


cdef inline bint is_i32(object x):
    return type(x) is int and -0x80000000 <= x <= 0x7FFFFFFF


cdef bint parse_quad(str s, Py_ssize_t start, Py_ssize_t stop, unsigned char* out):
    """``a.b.c.d`` in s[start:stop], decimal, no leading zeros; False for anything else."""
    cdef Py_ssize_t i
    cdef Py_UCS4 c, first = 0
    cdef int part = 0, ndig = 0
    cdef unsigned int val = 0
    for i in range(start, stop):
        c = s[i]
        if c == u'.':
            if ndig == 0 or part == 3:
                return False
            out[part] = <unsigned char>val
            part += 1
            ndig = 0
            val = 0
        elif u'0' <= c <= u'9':
            if ndig == 1 and first == u'0':
                return False
            if ndig == 0:
                first = c
            val = val * 10 + (<unsigned int>c - 48)
            ndig += 1
            if ndig > 3 or val > 255:
                return False
        else:
            return False
    if part != 3 or ndig == 0:
        return False
    out[3] = <unsigned char>val
    return True


cdef inline int hexval(Py_UCS4 c):
    if u'0' <= c <= u'9':
        return <int>c - 48
    if u'a' <= c <= u'f':
        return <int>c - 87
    if u'A' <= c <= u'F':
        return <int>c - 55
    return -1


cdef int copy_packed(object packed, unsigned char* out, Py_ssize_t* n) except -2:
    if type(packed) is not bytes or PyBytes_GET_SIZE(packed) > FIELDMAX:
        return FALLBACK
    n[0] = PyBytes_GET_SIZE(packed)
    memcpy(out, PyBytes_AS_STRING(packed), n[0])
    return 0


cdef int addr_of(str text, unsigned char* out, Py_ssize_t* n) except -2:
    """The family of an address (``wire.ip_packed``), its bytes in ``out``; FALLBACK: use the pure op."""
    if parse_quad(text, 0, len(text), out):
        n[0] = 4
        return AF_INET
    family, packed = ip_packed(text)
    if copy_packed(packed, out, n) < 0:
        return FALLBACK
    return family


cdef int prefix_of(str text, unsigned char* out, Py_ssize_t* n, unsigned int* plen, bint strict) except -2:
    """``ip/len`` as ``wire.network_packed`` (strict) or ``wire.interface_packed`` reads it."""
    cdef Py_ssize_t slash = text.find(u'/'), i, size = len(text)
    cdef unsigned int value = 0
    cdef uint32_t addr, host
    cdef Py_UCS4 c
    cdef bint fast = 0 < slash < size - 1 and size - slash - 1 <= 2 and parse_quad(text, 0, slash, out)
    if fast:
        for i in range(slash + 1, size):
            c = text[i]
            if not u'0' <= c <= u'9' or (i == slash + 1 and c == u'0' and size - slash - 1 > 1):
                fast = False
                break
            value = value * 10 + (<unsigned int>c - 48)
        fast = fast and value <= 32
    if fast and strict and value < 32:
        addr = (<uint32_t>out[0] << 24) | (<uint32_t>out[1] << 16) | (<uint32_t>out[2] << 8) | out[3]
        host = (<uint32_t>0xFFFFFFFF) >> value if value else <uint32_t>0xFFFFFFFF
        fast = (addr & host) == 0
    if fast:
        n[0] = 4
        plen[0] = value
        return AF_INET
    family, packed, length = (network_packed if strict else interface_packed)(text)
    if copy_packed(packed, out, n) < 0 or not is_u32(length) or length > 255:
        return FALLBACK
    plen[0] = length
    return family


cdef Py_ssize_t mac_of(str text, unsigned char* out) except -2:
    """The bytes of a MAC (``wire.mac_packed``), their number returned."""
    cdef int i, hi, lo
    cdef Py_ssize_t n
    if len(text) == 17:
        for i in range(6):
            hi = hexval(text[3 * i])
            lo = hexval(text[3 * i + 1])
            if hi < 0 or lo < 0 or (i < 5 and text[3 * i + 2] != u':'):
                break
            out[i] = <unsigned char>(hi << 4 | lo)
        else:
            return 6
    if copy_packed(mac_packed(text), out, &n) < 0:
        return FALLBACK
    return n


# ----------------------------------------------------------------- writing

cdef inline void put16(unsigned char* p, uint16_t v) noexcept:
    memcpy(p, &v, 2)


cdef inline void put32(unsigned char* p, uint32_t v) noexcept:
    memcpy(p, &v, 4)


cdef inline Py_ssize_t put_attr(unsigned char* m, Py_ssize_t at, uint16_t atype, const unsigned char* payload,
                                Py_ssize_t size) noexcept:
    cdef Py_ssize_t n = 4 + size
    put16(m + at, <uint16_t>n)
    put16(m + at + 2, atype)
    memcpy(m + at + 4, payload, size)
    memset(m + at + n, 0, (-n) & 3)
    return at + ((n + 3) & ~3)


cdef inline Py_ssize_t put_u32(unsigned char* m, Py_ssize_t at, uint16_t atype, uint32_t v) noexcept:
    put16(m + at, 8)
    put16(m + at + 2, atype)
    put32(m + at + 4, v)
    return at + 8


cdef inline Py_ssize_t finish(unsigned char* m, Py_ssize_t length, uint16_t mtype, uint16_t flags,
                              uint32_t seq) noexcept:
    """The ``nlmsghdr`` in front: len, type, flags, seq, pid 0."""
    put32(m, <uint32_t>length)
    put16(m + 4, mtype)
    put16(m + 6, flags)
    put32(m + 8, seq)
    put32(m + 12, 0)
    return length


cdef inline void ndmsg(unsigned char* m, unsigned int family, int32_t index, uint16_t state,
                       unsigned int flags) noexcept:
    memset(m + 16, 0, 12)
    m[16] = <unsigned char>family
    memcpy(m + 20, &index, 4)
    put16(m + 24, state)
    m[26] = <unsigned char>flags


# ----------------------------------------------------------------- the ops

cdef Py_ssize_t encode_route(tuple op, uint32_t seq, unsigned char* m) except -2:
    """``wire.encode_op`` of ``("route", delete, dst, gateway, onlink, metric, oif)``."""
    cdef bint delete = op[1]
    cdef object dst = op[2], gateway = op[3], onlink = op[4], metric = op[5], oif = op[6]
    cdef unsigned char d[FIELDMAX]
    cdef unsigned char g[FIELDMAX]
    cdef Py_ssize_t dn, gn = 0, at
    cdef unsigned int plen
    cdef int family, gfamily
    if (type(dst) is not str or not (gateway is None or type(gateway) is str) or type(onlink) is not bool
            or not is_u32(metric) or not (oif is None or is_u32(oif))):
        return FALLBACK
    family = prefix_of(dst, d, &dn, &plen, True)
    if family < 0:
        return FALLBACK
    if gateway is not None:
        gfamily = addr_of(gateway, g, &gn)
        if gfamily != family:           # FALLBACK, or a family mismatch: the pure code words it
            return FALLBACK
    m[16] = <unsigned char>family
    m[17] = <unsigned char>plen
    m[18] = m[19] = 0
    m[20] = RT_TABLE_MAIN
    if delete:
        # iproute2's delete: scope NOWHERE, type and protocol 0 (see wire._route_fields).
        m[21], m[22], m[23] = 0, RT_SCOPE_NOWHERE, 0
        put32(m + 24, 0)
    else:
        m[21] = RTPROT_RECONCILER
        m[22] = RT_SCOPE_UNIVERSE if gateway is not None else RT_SCOPE_LINK
        m[23] = RTN_UNICAST
        put32(m + 24, RTNH_F_ONLINK if onlink else 0)
    at = put_attr(m, 28, RTA_DST, d, dn)
    if gateway is not None:
        at = put_attr(m, at, RTA_GATEWAY, g, gn)
    if oif is not None:
        at = put_u32(m, at, RTA_OIF, <uint32_t>oif)
    if metric:
        at = put_u32(m, at, RTA_PRIORITY, <uint32_t>metric)
    if delete:
        return finish(m, at, RTM_DELROUTE, F_ACK, seq)
    return finish(m, at, RTM_NEWROUTE, F_REPLACE, seq)


cdef Py_ssize_t encode_neigh(tuple op, uint32_t seq, unsigned char* m) except -2:
    """``wire.encode_op`` of ``("neigh", delete, ip, mac, ifindex)``: ip first, then mac, as the pure one."""
    cdef bint delete = op[1]
    cdef object ip = op[2], mac = op[3], index = op[4]
    cdef unsigned char a[FIELDMAX]
    cdef unsigned char hw[FIELDMAX]
    cdef Py_ssize_t an, hn, at
    cdef int family
    if type(ip) is not str or not is_i32(index) or not (delete or type(mac) is str):
        return FALLBACK
    family = addr_of(ip, a, &an)
    if family < 0:
        return FALLBACK
    ndmsg(m, family, <int32_t>index, 0 if delete else NUD_PERMANENT, 0)
    at = put_attr(m, 28, NDA_DST, a, an)
    if delete:
        return finish(m, at, RTM_DELNEIGH, F_ACK, seq)
    hn = mac_of(mac, hw)
    if hn < 0:
        return FALLBACK
    at = put_attr(m, at, NDA_LLADDR, hw, hn)
    return finish(m, at, RTM_NEWNEIGH, F_REPLACE, seq)


cdef Py_ssize_t encode_fdb(tuple op, uint32_t seq, unsigned char* m) except -2:
    """``wire.encode_op`` of ``("fdb", delete, mac, dst, ifindex)``: NTF_SELF, the lladdr before the dst."""
    cdef bint delete = op[1]
    cdef object mac = op[2], dst = op[3], index = op[4]
    cdef unsigned char a[FIELDMAX]
    cdef unsigned char hw[FIELDMAX]
    cdef Py_ssize_t an, hn, at
    if type(mac) is not str or type(dst) is not str or not is_i32(index):
        return FALLBACK
    hn = mac_of(mac, hw)
    if hn < 0 or addr_of(dst, a, &an) < 0:
        return FALLBACK
    ndmsg(m, AF_BRIDGE, <int32_t>index, 0 if delete else NUD_PERMANENT, NTF_SELF)
    at = put_attr(m, 28, NDA_LLADDR, hw, hn)
    at = put_attr(m, at, NDA_DST, a, an)
    if delete:
        return finish(m, at, RTM_DELNEIGH, F_ACK, seq)
    return finish(m, at, RTM_NEWNEIGH, F_REPLACE, seq)


cdef Py_ssize_t encode_address(tuple op, uint32_t seq, unsigned char* m) except -2:
    """``wire.encode_op`` of ``("address", delete, cidr, ifindex)``: IFA_LOCAL and IFA_ADDRESS, scope global."""
    cdef bint delete = op[1]
    cdef object cidr = op[2], index = op[3]
    cdef unsigned char a[FIELDMAX]
    cdef Py_ssize_t an, at
    cdef unsigned int plen
    cdef int family
    if type(cidr) is not str or not is_u32(index):
        return FALLBACK
    family = prefix_of(cidr, a, &an, &plen, False)
    if family < 0:
        return FALLBACK
    m[16], m[17], m[18], m[19] = <unsigned char>family, <unsigned char>plen, 0, RT_SCOPE_UNIVERSE
    put32(m + 20, <uint32_t>index)
    at = put_attr(m, 24, IFA_LOCAL, a, an)
    at = put_attr(m, at, IFA_ADDRESS, a, an)
    if delete:
        return finish(m, at, RTM_DELADDR, F_ACK, seq)
    return finish(m, at, RTM_NEWADDR, F_REPLACE, seq)


cdef Py_ssize_t encode_one(object op, uint32_t seq, unsigned char* m) except -2:
    """The message of one op in ``m``, its length returned; FALLBACK: outside the compiled domain."""
    cdef Py_ssize_t n
    if type(op) is not tuple:
        return FALLBACK
    n = len(op)
    if n < 2 or type(op[0]) is not str or type(op[1]) is not bool:
        return FALLBACK
    kind = op[0]
    if kind == u"route" and n == 7:
        return encode_route(op, seq, m)
    if kind == u"neigh" and n == 5:
        return encode_neigh(op, seq, m)
    if kind == u"fdb" and n == 5:
        return encode_fdb(op, seq, m)
    if kind == u"address" and n == 4:
        return encode_address(op, seq, m)
    return FALLBACK


# ------------------------------------------------------------------ batches

def encode_batch(ops, seq0, chunk_bytes, ack_each=True):
    """See ``wire.encode_batch``: ``(chunks, failed)``, identical."""
    cdef unsigned char msg[MSGMAX]
    cdef unsigned char* buf = NULL
    cdef unsigned char* grown
    cdef const unsigned char* src
    cdef Py_ssize_t size = 0, cap, mlen, limit, i = 0, last = 0
    cdef long long first
    cdef list chunks = [], failed = [], seqs = []
    cdef bint each = bool(ack_each)
    if type(seq0) is not int or type(chunk_bytes) is not int or not -2 ** 62 < chunk_bytes < 2 ** 62:
        return pure_encode_batch(ops, seq0, chunk_bytes, ack_each)
    check_seq_range(seq0, len(ops))
    first = seq0
    limit = chunk_bytes
    cap = (limit if limit > 0 else 0) + MSGMAX
    buf = <unsigned char*>malloc(cap)
    if buf == NULL:
        raise MemoryError()
    try:
        for op in ops:
            data = None
            try:
                mlen = encode_one(op, <uint32_t>(first + i), msg)
                if mlen < 0:
                    data = pure_encode_op(first + i, op)
                    mlen = len(data)
            except ENCODE_ERRORS as exc:
                failed.append((i, exc))
                i += 1
                continue
            if data is None:
                src = msg
            else:
                src = <const unsigned char*>PyBytes_AS_STRING(data)
            if seqs and size + mlen > limit:
                if not each:
                    buf[last + 6] |= NLM_F_ACK      # the chunk's last request: its ACK closes the chunk
                chunks.append((PyBytes_FromStringAndSize(<char*>buf, size), seqs))
                seqs = []
                size = 0
            if size + mlen > cap:
                grown = <unsigned char*>realloc(buf, size + mlen)
                if grown == NULL:
                    raise MemoryError()
                buf, cap = grown, size + mlen
            memcpy(buf + size, src, mlen)
            if not each:
                buf[size + 6] &= ~NLM_F_ACK         # answered only if it fails (wire.encode_batch)
            last = size
            size += mlen
            seqs.append(first + i)
            i += 1
        if seqs:
            if not each:
                buf[last + 6] |= NLM_F_ACK
            chunks.append((PyBytes_FromStringAndSize(<char*>buf, size), seqs))
    finally:
        free(buf)
    return chunks, failed


def match_acks(buf, seq0, count):
    """See ``wire.match_acks``: ``(position, errno, extack message)`` of the answers to a batch."""
    cdef long long s0, n, pos
    cdef list out = []
    if type(seq0) is not int or type(count) is not int or not -2 ** 62 < seq0 < 2 ** 62 \
            or not -2 ** 62 < count < 2 ** 62:
        return pure_match_acks(buf, seq0, count)
    s0, n = seq0, count
    for seq, code, text in decode_acks(buf):
        pos = <long long>seq - s0
        if 0 <= pos < n:
            out.append((pos, code, text))
    return out


# ------------------------------------------------------------------ results

# An errors-only chunk's requests that drew no error succeeded: one ``OpResult(change, ok=True)``
# each, 15,000 in a cold start.  Built as the dump's values are (``_codec.pyx``): a new instance
# and its slots set from C, without the dataclass ``__init__`` (2 us each, 30 ms of a cold
# start), while the class is the slotted dataclass with these fields; else through it.
cdef object object_new = object.__new__
cdef tuple RESULT_FIELDS = ("change", "ok", "errno", "message", "skipped")
cdef bint FAST_RESULT = _shape.plain(OpResult, RESULT_FIELDS)      # (``_fastpath/_shape.py``)
#: Whether ``fill_ok`` builds its results without their ``__init__`` (for the tests).
RESULTS_BUILT_DIRECTLY = FAST_RESULT


def fill_ok(list results, changes, where, ks):
    """``results[where[k]] = OpResult(changes[where[k]], ok=True)`` for each ``k`` of ``ks`` whose
    result is still None (see ``batched._fill_ok``, the same in Python)."""
    cdef object o
    for k in ks:
        i = where[k]
        if results[i] is not None:
            continue
        if FAST_RESULT:
            o = object_new(OpResult)
            PyObject_GenericSetAttr(o, "change", changes[i])
            PyObject_GenericSetAttr(o, "ok", True)
            PyObject_GenericSetAttr(o, "errno", None)
            PyObject_GenericSetAttr(o, "message", "")
            PyObject_GenericSetAttr(o, "skipped", False)
        else:
            o = OpResult(changes[i], True)
        results[i] = o
