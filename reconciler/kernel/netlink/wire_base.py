"""The rtnetlink constants and framing shared by the wire codec's two halves.

``wire.py`` (the encoders, ACKs and the dump scan) and ``wire_decode.py``
(the dump decoders) both build on this: kernel constants in kernel
spelling, the header layouts, ``DecodeError`` and the walk over messages
and attributes.  Kept apart only so that neither half imports the other's
module half-initialised.  ``wire`` re-exports the names here, so
``wire.<name>`` keeps working for all of them.
"""
from __future__ import annotations

import struct

# ------------------------------------------------------------------ constants
# linux/netlink.h
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_ROOT, NLM_F_MATCH = 0x100, 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200          # on NLMSG_ERROR answers
NLMSGERR_ATTR_MSG = 1
NLA_TYPE_MASK = 0x3FFF
SOL_NETLINK = 270
NETLINK_ROUTE = 0
NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK = 10, 11, 12

# linux/rtnetlink.h
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 6, 9, 15
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RTN_BLACKHOLE = 6
#: ``rtm_type`` of the route types we read and write, by ``Route.type``.
ROUTE_TYPE_CODES = {"unicast": RTN_UNICAST, "blackhole": RTN_BLACKHOLE}
ROUTE_TYPE_NAMES = {v: k for k, v in ROUTE_TYPE_CODES.items()}
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
RTNH_F_ONLINK = 0x4
RTM_F_CLONED = 0x200

# linux/if_link.h, linux/if.h
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO = 1, 3, 4, 18
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VXLAN_ID, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_TTL = 1, 3, 4, 5
IFLA_VXLAN_LEARNING, IFLA_VXLAN_PROXY, IFLA_VXLAN_L2MISS, IFLA_VXLAN_L3MISS = 7, 11, 13, 14
IFLA_VXLAN_PORT, IFLA_VXLAN_LOCAL6, IFLA_VXLAN_GBP = 15, 17, 23
IFF_UP = 0x1
VXLAN_DEFAULT_PORT = 8472

# linux/if_addr.h
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8

# linux/neighbour.h
NDA_DST, NDA_LLADDR, NDA_IFINDEX = 1, 2, 8
NUD_PERMANENT = 0x80
NTF_SELF, NTF_PROXY = 0x02, 0x08

F_DUMP = NLM_F_REQUEST | NLM_F_DUMP
F_ACK = NLM_F_REQUEST | NLM_F_ACK                       # ip ... del / ip link set
F_ADD_EXCL = F_ACK | NLM_F_CREATE | NLM_F_EXCL          # ip link add
F_REPLACE = F_ACK | NLM_F_CREATE | NLM_F_REPLACE        # ip ... replace

NLMSGHDR = struct.Struct("=IHHII")       # len, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")     # family, (pad), type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")      # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")      # family, dst_len, src_len, tos, table, protocol, scope, type, flags
NDMSG = struct.Struct("=BBHiHBB")        # family, pad1, pad2, ifindex, state, flags, type
RTATTR = struct.Struct("=HH")            # len, type
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
_U16 = struct.Struct("=H")
_RTNEXTHOP = struct.Struct("=HBBi")      # len, flags, hops, ifindex


class DecodeError(ValueError):
    """The framing of a netlink buffer is broken: nothing after this point can be trusted."""


# ================================================================== framing

def _attrs(buf, a: int, end: int) -> dict[int, tuple[int, int]] | None:
    """``{type: (start, stop)}`` of the attributes in ``buf[a:end]``; None if one overruns.

    Fewer than 4 bytes left over are ignored (the kernel's ``nla_for_each_attr``
    does the same); a later attribute of the same type wins.
    """
    out: dict[int, tuple[int, int]] = {}
    unpack = RTATTR.unpack_from
    while end - a >= 4:
        alen, atype = unpack(buf, a)
        if alen < 4 or alen > end - a:
            return None
        out[atype & NLA_TYPE_MASK] = (a + 4, a + alen)
        a += (alen + 3) & ~3
    return out


def _messages(buf):
    """``(type, flags, seq, start, end)`` of each message; ``DecodeError`` on broken framing."""
    n = len(buf)
    off = 0
    unpack = NLMSGHDR.unpack_from
    while off < n:
        if n - off < 16:
            raise DecodeError(f"truncated netlink header at offset {off} ({n - off} bytes left)")
        mlen, mtype, mflags, seq, _pid = unpack(buf, off)
        if mlen < 16 or mlen > n - off:
            raise DecodeError(f"netlink message at offset {off} claims {mlen} bytes, {n - off} left")
        yield mtype, mflags, seq, off, off + mlen
        off += (mlen + 3) & ~3


# ----------------------------------------------------- nexthop objects
# linux/rtnetlink.h, linux/nexthop.h (the ``nexthop`` route layout)
RTM_NEWNEXTHOP, RTM_DELNEXTHOP, RTM_GETNEXTHOP = 104, 105, 106
RTA_NH_ID = 30
NHA_ID, NHA_GROUP, NHA_BLACKHOLE, NHA_OIF, NHA_GATEWAY = 1, 2, 4, 5, 6
NHMSG = struct.Struct("=BBBBI")          # family, scope, protocol, resvd, flags
