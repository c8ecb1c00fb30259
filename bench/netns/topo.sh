#!/bin/bash
# The L3/L4 bench topology: client ns -- firewall ns -- server ns, veth pairs, no route out.
#
#   pcl4-cli  l4c 198.18.0.2/24 ==== l4fi 198.18.0.1/24  pcl4-fw  l4fo 198.19.0.1/24 ==== l4s 198.19.0.2/24  pcl4-srv
#
# Method (shared/notes/bench-method.md): GRO on every veth (gives veth its NAPI; native XDP_REDIRECT
# into a veth needs it on the peer), TSO and tx checksum offload off on the endpoints, threaded NAPI
# on every veth, the firewall's NAPI threads pinned to FW_CPU (1) and the endpoints' to EP_CPU (0).
# Permanent neighbours so nothing waits for ARP. Addresses: 198.18.0.0/15 (RFC 2544 benchmarking).
#
#   topo.sh up     (re)create it
#   topo.sh pin    re-pin the NAPI threads (attaching XDP re-creates them)
#   topo.sh down   delete it (idempotent)
set -euo pipefail

CLI=pcl4-cli FW=pcl4-fw SRV=pcl4-srv
FW_CPU=${FW_CPU:-1}
EP_CPU=${EP_CPU:-0}
MAC_C=02:00:5e:18:00:02 MAC_FI=02:00:5e:18:00:01 MAC_FO=02:00:5e:19:00:01 MAC_S=02:00:5e:19:00:02

down() {
	local ns
	for ns in $CLI $FW $SRV; do
		if ip netns list | grep -qw "^$ns"; then
			ip netns del "$ns" 2>/dev/null || true
		fi
	done
}

pin() {
	local dev cpu pid ok=0 tries
	# NAPI kthreads are named napi/<dev>-<id>; the device names are unique to this bench.
	for tries in 1 2 3 4 5 6 7 8 9 10; do
		ok=1
		for dev in l4fi:$FW_CPU l4fo:$FW_CPU l4c:$EP_CPU l4s:$EP_CPU; do
			cpu=${dev#*:}
			dev=${dev%:*}
			pids=$(pgrep "^napi/$dev-" || true)
			if [ -z "$pids" ]; then
				ok=0
				continue
			fi
			for pid in $pids; do
				taskset -pc "$cpu" "$pid" >/dev/null
			done
		done
		[ $ok = 1 ] && return 0
		sleep 0.1
	done
	echo "topo.sh: some NAPI threads were not found (threaded NAPI off?)" >&2
	return 1
}

up() {
	down
	local ns
	for ns in $CLI $FW $SRV; do
		ip netns add "$ns"
		ip -n "$ns" link set lo up
	done
	ip -n $CLI link add l4c address $MAC_C type veth peer name l4fi address $MAC_FI netns $FW
	ip -n $SRV link add l4s address $MAC_S type veth peer name l4fo address $MAC_FO netns $FW
	ip -n $CLI addr add 198.18.0.2/24 dev l4c
	ip -n $FW addr add 198.18.0.1/24 dev l4fi
	ip -n $FW addr add 198.19.0.1/24 dev l4fo
	ip -n $SRV addr add 198.19.0.2/24 dev l4s
	ip -n $CLI link set l4c up
	ip -n $FW link set l4fi up
	ip -n $FW link set l4fo up
	ip -n $SRV link set l4s up
	ip -n $CLI route add default via 198.18.0.1
	ip -n $SRV route add default via 198.19.0.1
	ip -n $CLI neigh replace 198.18.0.1 lladdr $MAC_FI dev l4c nud permanent
	ip -n $FW neigh replace 198.18.0.2 lladdr $MAC_C dev l4fi nud permanent
	ip -n $FW neigh replace 198.19.0.2 lladdr $MAC_S dev l4fo nud permanent
	ip -n $SRV neigh replace 198.19.0.1 lladdr $MAC_FO dev l4s nud permanent
	ip netns exec $FW sysctl -qw net.ipv4.ip_forward=1
	ip netns exec $CLI ethtool -K l4c gro on tso off tx off >/dev/null
	ip netns exec $SRV ethtool -K l4s gro on tso off tx off >/dev/null
	ip netns exec $FW ethtool -K l4fi gro on >/dev/null
	ip netns exec $FW ethtool -K l4fo gro on >/dev/null
	ip netns exec $CLI sh -c 'echo 1 > /sys/class/net/l4c/threaded'
	ip netns exec $SRV sh -c 'echo 1 > /sys/class/net/l4s/threaded'
	ip netns exec $FW sh -c 'echo 1 > /sys/class/net/l4fi/threaded; echo 1 > /sys/class/net/l4fo/threaded'
	pin
}

case "${1:-}" in
up) up ;;
down) down ;;
pin) pin ;;
*)
	echo "usage: $0 up|pin|down" >&2
	exit 2
	;;
esac
