"""Kernel objects as frozen values, in iproute2's vocabulary.

Every object has an identity ``key`` (the fields the kernel itself uses to tell
two entries apart) and attributes.  Two objects with the same key are the same
kernel entry; if their compared attributes differ, the entry has drifted.

The values are deliberately plain (strings, ints, bools, ``None``) so that any
backend -- pyroute2, the Cython batch path, the model kernel in the tests, or a
JSON live-state file -- can produce them directly and cheaply, and so that they
hash fast when 5,000 nodes' worth of them sit in dicts.

IP addresses and prefixes are canonical strings (``ipaddress`` ``str()``
form); MACs are lower-case and colon separated, as Go's
``net.HardwareAddr.String()`` writes them.

``None`` in a *desired* attribute means "don't care": it is never compared.
This is how, for example, the MAC of ``cni0`` (chosen by the kernel) or the
underlay link of ``flannel.1`` in an offline plan stay out of the diff.

Identity keys, and why:

=========  ====================  =================================================
kind       key                   why
=========  ====================  =================================================
link       name                  we manage devices by name; ifindex is not stable
address    (dev, cidr)           ``ip addr`` identity: local address + prefix len
route      (dst, metric)         main table, tos 0: the kernel's (table, dst, tos,
                                 priority).  An IPv6 route's metric 0 is stored by
                                 the kernel as 1024, so desired v6 routes say 1024.
neigh      (dev, ip)             the ARP/NDP table is keyed on (ifindex, IP)
fdb        (dev, mac)            a unicast MAC on a VXLAN device is one entry;
                                 ``replace`` swaps its ``dst``
nexthop    id                    nexthop objects (``ip nexthop``) live in one
                                 per-namespace id space, whatever their family
=========  ====================  =================================================
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Iterable, Iterator, Mapping, Union

__all__ = [
    "Address",
    "Fdb",
    "KernelObject",
    "KernelState",
    "KINDS",
    "Link",
    "Neigh",
    "Nexthop",
    "Route",
    "attr_diff",
    "ROUTE_TYPES",
    "RTPROT_KERNEL",
    "RTPROT_RECONCILER",
]

#: Route protocol of the routes we write (``rtm_protocol``).  Calico learned
#: the hard way that marking routes with ``boot`` makes ownership guesswork; a
#: number of our own makes ``ip route`` show ``proto 73`` (or ``proto flannel``
#: after ``echo '73 flannel' > /etc/iproute2/rt_protos.d/flannel.conf``).
#: 73 is unassigned in iproute2's ``rt_protos`` and in ``rtnetlink.h``.
RTPROT_RECONCILER = 73
#: ``rtm_protocol`` of the routes the kernel adds for an address's prefix.
RTPROT_KERNEL = 2
#: The route types we read and write (``Route.type``); others are not ours to know.
ROUTE_TYPES = ("unicast", "blackhole")


class _Base:
    """Shared behaviour: identity, the compared attributes, and JSON form."""

    __slots__ = ()
    KIND: ClassVar[str]
    #: Attributes compared to detect drift (identity fields are never here).
    COMPARED: ClassVar[tuple[str, ...]]
    #: Fields written in the JSON form, in order.
    JSON_FIELDS: ClassVar[tuple[str, ...]]

    @property
    def key(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.JSON_FIELDS}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]):
        names = {f.name for f in fields(cls)}
        kept = {k: v for k, v in obj.items() if k in names}
        for f in fields(cls):
            if f.name in kept:
                _check_json_type(f.name, str(f.type), kept[f.name])
        return cls(**kept)


#: The JSON types a field's annotation allows (bool is not an int here,
#: although Python says it is: ``"mtu": true`` is a mistake, not 1).
_JSON_TYPES = {"str": (str,), "int": (int,), "bool": (bool,), "None": (type(None),)}


def _check_json_type(name: str, annotation: str, value: Any) -> None:
    allowed = tuple(t for part in annotation.split("|") for t in _JSON_TYPES[part.strip()])
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        want = " or ".join("null" if p.strip() == "None" else p.strip() for p in annotation.split("|"))
        raise TypeError(f"{name} must be {want}, got {value!r}"[:200])


@dataclass(frozen=True, slots=True)
class Link(_Base):
    """A network device: ``ip link``.

    ``type`` is the kernel's ``IFLA_INFO_KIND`` (``vxlan``, ``bridge``, ...).
    The vxlan attributes are ``None`` on other types.  ``underlay`` is the
    name of the device ``IFLA_VXLAN_LINK`` points at.
    """

    name: str
    type: str
    mtu: int | None = None
    mac: str | None = None
    up: bool | None = None
    vni: int | None = None
    local: str | None = None
    port: int | None = None
    learning: bool | None = None
    gbp: bool | None = None
    underlay: str | None = None

    KIND: ClassVar[str] = "link"
    #: Attributes the kernel cannot change on a live device (or that we refuse
    #: to change in place): a difference means delete and re-create, after
    #: which the device's addresses and entries must be written again.
    IMMUTABLE: ClassVar[tuple[str, ...]] = ("type", "vni", "local", "port", "learning", "gbp", "underlay")
    #: Changed in place (``ip link set``).
    MUTABLE: ClassVar[tuple[str, ...]] = ("mtu", "mac", "up")
    COMPARED: ClassVar[tuple[str, ...]] = IMMUTABLE + MUTABLE

    @property
    def key(self) -> str:
        return self.name

    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("name", "type", "mtu", "mac", "up")
    VXLAN_JSON_FIELDS: ClassVar[tuple[str, ...]] = ("vni", "local", "port", "learning")

    def to_json(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in self.JSON_FIELDS}
        if self.type == "vxlan":
            for f in self.VXLAN_JSON_FIELDS:
                out[f] = getattr(self, f)
            if self.underlay is not None:
                out["underlay"] = self.underlay
        return out


@dataclass(frozen=True, slots=True)
class Address(_Base):
    """An interface address: ``ip addr add <cidr> dev <dev>``."""

    dev: str
    cidr: str

    KIND: ClassVar[str] = "address"
    COMPARED: ClassVar[tuple[str, ...]] = ()
    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("dev", "cidr")

    @property
    def key(self) -> tuple[str, str]:
        return (self.dev, self.cidr)


@dataclass(frozen=True, slots=True)
class Route(_Base):
    """A unicast route in the main table: ``ip route replace <dst> via <gateway> dev <dev> [onlink]``.

    ``nhid`` is the nexthop object the route forwards through
    (``ip route replace <dst> nhid N``, the ``nexthop`` route layout); 0 means
    none, as the kernel never hands out id 0.  It is always compared, so a
    route that still uses a nexthop object drifts from a desired onlink route
    (and the other way round).  A route through a nexthop object has no
    gateway or device of its own: the desired one says ``None`` for both
    (don't care), and the kernel's dump repeats the nexthop's gateway and
    device only with ``net.ipv4.nexthop_compat_mode=1`` (docs/route-layouts.md).

    ``type`` is the kernel's route type (``rtm_type``): ``unicast``, or
    ``blackhole`` for flanneld's ``-ip-blackhole-route`` (no gateway, no
    device: matching packets are dropped).  It is compared, so a route of the
    wrong type at our key is replaced.

    ``protocol`` is what the kernel reports (``rtm_protocol``).  It is read
    for the ownership decision but not compared: a route flanneld left
    (``proto boot``) with the right next hop is adopted as it is, because
    rewriting thousands of correct gateway routes costs real kernel time
    (docs/kernel-facts.md section 1).  ``dev`` is ``None`` in a desired
    DirectRouting route when the underlay is not known (the kernel resolves it).
    """

    dst: str
    gateway: str | None
    dev: str | None
    onlink: bool | None = False
    metric: int = 0
    # Not part of equality either: two routes that forward the same way are the
    # same route to us, which lets a converged table compare equal at C speed.
    protocol: int | None = field(default=None, compare=False)
    nhid: int = 0
    type: str = "unicast"

    KIND: ClassVar[str] = "route"
    COMPARED: ClassVar[tuple[str, ...]] = ("gateway", "dev", "onlink", "nhid", "type")
    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("dst", "gateway", "dev", "onlink")

    @property
    def key(self) -> tuple[str, int]:
        return (self.dst, self.metric)

    def to_json(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in self.JSON_FIELDS}
        if self.metric not in (0, 1024):
            out["metric"] = self.metric
        if self.nhid:
            out["nhid"] = self.nhid
        if self.type != "unicast":
            out["type"] = self.type
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]):
        # A route through a nexthop, or a blackhole, may have no gateway or device
        # (the full-fidelity form leaves out every None); a connected route (the
        # bridge's) has a device and no gateway; any other route names both.
        if obj.get("type", "unicast") not in ROUTE_TYPES:
            raise TypeError(f"type must be one of {', '.join(ROUTE_TYPES)}, got {obj.get('type')!r}"[:200])
        if obj.get("nhid") or obj.get("type") == "blackhole":
            obj = {"gateway": None, "dev": None, **obj}
        elif "dev" in obj:
            obj = {"gateway": None, **obj}
        return _Base.from_json.__func__(cls, obj)


@dataclass(frozen=True, slots=True)
class Neigh(_Base):
    """A permanent neighbour (ARP/NDP) entry: ``ip neigh replace <ip> lladdr <mac> dev <dev> nud permanent``.

    Neighbour vs FDB, the pair everybody confuses: the *neighbour* entry maps
    the remote node's overlay IP (its subnet address, the route's gateway) to
    the inner MAC of its VTEP, so the kernel needs no ARP on the overlay.  The
    *FDB* entry then maps that inner MAC to the outer (underlay) IP to which
    the VXLAN packet is sent.
    """

    dev: str
    ip: str
    mac: str

    KIND: ClassVar[str] = "neigh"
    COMPARED: ClassVar[tuple[str, ...]] = ("mac",)
    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("dev", "ip", "mac")

    @property
    def key(self) -> tuple[str, str]:
        return (self.dev, self.ip)


@dataclass(frozen=True, slots=True)
class Fdb(_Base):
    """A VXLAN forwarding entry: ``bridge fdb replace <mac> dev <dev> dst <dst> self permanent``."""

    dev: str
    mac: str
    dst: str

    KIND: ClassVar[str] = "fdb"
    COMPARED: ClassVar[tuple[str, ...]] = ("dst",)
    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("dev", "mac", "dst")

    @property
    def key(self) -> tuple[str, str]:
        return (self.dev, self.mac)


@dataclass(frozen=True, slots=True)
class Nexthop(_Base):
    """A nexthop object: ``ip nexthop replace id <id> via <gateway> dev <dev> onlink``.

    The ``nexthop`` route layout routes each peer's subnet through one of
    these (``route <subnet> nhid <id>``) instead of an onlink gateway of its
    own: the kernel hashes such routes by nexthop id, so installing them
    stays linear past 10,000 peers (docs/route-layouts.md).  The gateway is
    the same peer subnet address the onlink route uses, so the neighbour
    and FDB entries are unchanged.  ``protocol`` is read, never compared.
    """

    id: int
    gateway: str | None
    dev: str | None
    onlink: bool = False
    protocol: int | None = None

    KIND: ClassVar[str] = "nexthop"
    COMPARED: ClassVar[tuple[str, ...]] = ("gateway", "dev", "onlink")
    JSON_FIELDS: ClassVar[tuple[str, ...]] = ("id", "gateway", "dev", "onlink")

    @property
    def key(self) -> int:
        return self.id


KernelObject = Union[Link, Address, Route, Neigh, Fdb, Nexthop]

#: The kinds in dependency order: a later kind may need an earlier one to
#: exist (an address needs its device, a nexthop its neighbour and FDB entry,
#: a route its neighbour and FDB entry or its nexthop).  Creation walks this
#: order, deletion walks it backwards (``plan._STEPS`` has the exceptions).
KINDS: tuple[str, ...] = ("link", "address", "neigh", "fdb", "nexthop", "route")
CLASSES: dict[str, type] = {"link": Link, "address": Address, "route": Route, "neigh": Neigh, "fdb": Fdb,
                            "nexthop": Nexthop}


def attr_diff(desired: KernelObject, live: KernelObject) -> dict[str, tuple[Any, Any]]:
    """The compared attributes that differ, as ``{name: (desired, live)}``.

    A desired ``None`` means "don't care" and never differs.
    """
    out: dict[str, tuple[Any, Any]] = {}
    for name in desired.COMPARED:
        want = getattr(desired, name)
        if want is None:
            continue
        have = getattr(live, name)
        if want != have:
            out[name] = (want, have)
    return out


class KernelState:
    """One side of the diff (desired or live): a map from key to object per kind.

    Kinds are kept apart so that the planner can walk them in dependency
    order, and so that a lookup is a dict hit: nothing here is quadratic.
    """

    __slots__ = ("_by_kind",)

    def __init__(self, objects: Iterable[KernelObject] = ()) -> None:
        self._by_kind: dict[str, dict[Any, KernelObject]] = {k: {} for k in KINDS}
        for obj in objects:
            self.add(obj)

    def add(self, obj: KernelObject) -> None:
        """Add an object; a second object with the same key replaces the first."""
        self._by_kind[obj.KIND][obj.key] = obj

    def discard(self, obj: KernelObject) -> None:
        self._by_kind[obj.KIND].pop(obj.key, None)

    def of(self, kind: str) -> dict[Any, KernelObject]:
        return self._by_kind[kind]

    def get(self, kind: str, key: Any) -> KernelObject | None:
        return self._by_kind[kind].get(key)

    def __iter__(self) -> Iterator[KernelObject]:
        for kind in KINDS:
            yield from self._by_kind[kind].values()

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_kind.values())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KernelState):
            return NotImplemented
        return self._by_kind == other._by_kind

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={len(v)}" for k, v in self._by_kind.items())
        return f"KernelState({counts})"

    def instance_of(self, obj: KernelObject) -> KernelObject:
        """The object this state holds at ``obj``'s key when it is equal to ``obj``, else ``obj``.

        A lookup, safe to call from another thread than the one changing the state (one dict
        read); equality decides, so a stale answer is still an equal value."""
        held = self._by_kind[obj.KIND].get(obj.key)
        return held if held is not None and held == obj else obj

    def share_equal(self, other: "KernelState") -> None:
        """Hold ``other``'s instance (and key) wherever this state's object at the same key is
        equal to it.

        Equal values are interchangeable, so two states that mostly agree (the believed kernel
        view and the desired state, once converged) need one copy of each object, not two.

        A kind whose two maps are equal as a whole (a converged node's resync) becomes a copy
        of ``other``'s map: one comparison at C speed and one copy, instead of a lookup per
        object in Python (docs/memory.md).  Otherwise each changed kind's dict is built again
        in the same order rather than assigned in place: a dict keeps the key it has on
        assignment, and deleting and adding again would leave it sized for twice its entries."""
        for kind, have in self._by_kind.items():
            want = other._by_kind[kind]
            if not want or not have:
                continue
            if len(have) == len(want) and have == want:
                self._by_kind[kind] = want.copy()
                continue
            swaps: dict[Any, tuple[Any, KernelObject]] = {}
            for key, obj in want.items():
                cur = have.get(key)
                if cur is not None and cur is not obj and cur == obj:
                    swaps[key] = (key, obj)
            if swaps:
                self._by_kind[kind] = {k: v for k, v in (swaps.get(key, (key, cur)) for key, cur in have.items())}

    def filter(self, keep) -> "KernelState":
        return KernelState(o for o in self if keep(o))

    # JSON form: {"links": [...], "addresses": [...], "routes": [...], "neighs": [...], "fdb": [...],
    # "nexthops": [...]}
    JSON_SECTIONS: ClassVar[dict[str, str]] = {
        "link": "links", "address": "addresses", "route": "routes", "neigh": "neighs", "fdb": "fdb",
        "nexthop": "nexthops",
    }

    def to_json(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for kind in KINDS:
            objs = self._by_kind[kind].values()
            # Full fidelity (every non-None field), so that the file reads back
            # into equal values.
            out[self.JSON_SECTIONS[kind]] = [
                {f.name: getattr(o, f.name) for f in fields(o) if getattr(o, f.name) is not None}
                for o in objs
            ]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "KernelState":
        """Parse the live-state file form (``--live-file``).  Raises ``ValueError`` naming the bad row."""
        state = cls()
        if not isinstance(data, Mapping):
            raise ValueError(f"live state: must be a JSON object of sections, got {type(data).__name__}")
        for kind, section in cls.JSON_SECTIONS.items():
            rows = data.get(section, [])
            if not isinstance(rows, list):
                raise ValueError(f"live state: {section!r} must be a list")
            for i, row in enumerate(rows):
                if not isinstance(row, Mapping):
                    raise ValueError(f"live state: {section}[{i}] must be an object")
                try:
                    obj = CLASSES[kind].from_json(row)
                except TypeError as exc:
                    raise ValueError(f"live state: {section}[{i}]: {exc}") from None
                state.add(obj)
        return state
