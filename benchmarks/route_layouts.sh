#!/bin/sh
# usage: route_layouts.sh N LAYOUT   (LAYOUT: onlink | nexthop)
# N peers with /25 subnets of 100.64.0.0/10 (32,767 fit), one scratch namespace, iproute2 batch mode.
set -e
N=$1; LAYOUT=$2; NS=nhbench-$$; DIR=$(mktemp -d)
trap 'ip netns del $NS 2>/dev/null; rm -rf "$DIR"' EXIT
ip netns add $NS
ip -n $NS link set lo up
ip -n $NS link add flannel.1 type vxlan id 1 local 198.18.0.1 dstport 8472 nolearning
ip -n $NS link set flannel.1 up
ip -n $NS addr add 100.64.0.0/32 dev flannel.1
python3 - "$N" "$LAYOUT" "$DIR" <<'PY'
import ipaddress, sys
n, layout, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
net = ipaddress.ip_network("100.64.0.0/10")
nh, rt = [], []
for i in range(1, n + 1):
    gw = net.network_address + i * 128
    if layout == "nexthop":
        nh.append(f"nexthop replace id {0x464C0000 + i} via {gw} dev flannel.1 onlink proto 73")
        rt.append(f"route replace {gw}/25 nhid {0x464C0000 + i} proto 73")
    else:
        rt.append(f"route replace {gw}/25 via {gw} dev flannel.1 onlink proto 73")
open(f"{out}/nh", "w").write("".join(l + "\n" for l in nh))
open(f"{out}/rt", "w").write("".join(l + "\n" for l in rt))
PY
t0=$(date +%s.%N)
if [ "$LAYOUT" = nexthop ]; then ip -n $NS -batch $DIR/nh; fi
t1=$(date +%s.%N)
ip -n $NS -batch $DIR/rt
t2=$(date +%s.%N)
echo "$N $LAYOUT nexthops=$(awk "BEGIN{print $t1 - $t0}")s routes=$(awk "BEGIN{print $t2 - $t1}")s total=$(awk "BEGIN{print $t2 - $t0}")s in_kernel=$(ip -n $NS route show proto 73 | wc -l)"
