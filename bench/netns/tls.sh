#!/bin/bash
# TLS SNI-filtering bench: portcullis (application proxy) vs haproxy 2.6 (req.ssl_sni) vs squid 5.7
# (peek-and-splice) vs plain kernel forwarding, same netns topology, same run, rounds interleaved.
# Method: bench/README.md ("TLS SNI filtering bench") and shared/notes/bench-method.md.
#
#   bench/netns/tls.sh [--rounds 3] [--variants plain,portcullis,haproxy,squid,haproxy-xdp] [--window 10]
#                      [--latency-n 200] [--conns 32] [--work DIR]
#
#   pctls-cli  tlc 198.18.1.10/24 ==== tlfi 198.18.1.1/24  pctls-fw  tlfo 192.0.2.1/24 ==== tlsv 192.0.2.254/24  pctls-srv
#                                                                                      lo 203.0.113.10 nginx, .11 dnsmasq
# Needs root, nginx, dnsmasq-base, nftables, wrk, curl, openssl, haproxy, squid-openssl (ssl_bump);
# PORTCULLIS=path overrides target/release/portcullis (otherwise built with cargo build --release -p portcullis).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

ROUNDS=3
VARIANTS=plain,portcullis,haproxy,squid
WINDOW=10
LAT_N=200
CONNS=32
WORK=$root/target/bench-tls
FW_CPU=${FW_CPU:-1}
EP_CPU=${EP_CPU:-0}
while [ $# -gt 0 ]; do
	case "$1" in
	--rounds) ROUNDS=$2; shift 2 ;;
	--variants) VARIANTS=$2; shift 2 ;;
	--window) WINDOW=$2; shift 2 ;;
	--latency-n) LAT_N=$2; shift 2 ;;
	--conns) CONNS=$2; shift 2 ;;
	--work) WORK=$2; shift 2 ;;
	-h | --help) sed -n 2,13p "$0"; exit 0 ;;
	*) echo "tls.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
if [ "$(id -u)" != 0 ]; then
	echo "tls.sh: needs root (namespaces, XDP, nftables)" >&2
	exit 1
fi
for t in nginx dnsmasq nft wrk curl openssl taskset nsenter ethtool; do
	command -v $t >/dev/null || { echo "tls.sh: $t missing (apt-get install -y nginx dnsmasq-base nftables wrk curl)" >&2; exit 1; }
done

CLI=pctls-cli FW=pctls-fw SRV=pctls-srv
NAME=bench.lab.test
CLIENT=198.18.1.10 FW_IN=198.18.1.1 FW_OUT=192.0.2.1 ROUTER=192.0.2.254
SERVER=203.0.113.10 RESOLVER=203.0.113.11
MAC_C=02:00:5e:12:01:0a MAC_FI=02:00:5e:12:01:01 MAC_FO=02:00:5e:c0:02:01 MAC_S=02:00:5e:c0:02:fe
PIN_DIR=/sys/fs/bpf/pctls-bench-$$
HOSTS_DIR=/etc/netns/$CLI
PORTCULLIS=${PORTCULLIS:-$root/target/release/portcullis}
# haproxy refuses to start below maxconn × 2 descriptors (its maxconn is sized for this hard limit).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
CLK_TCK=$(getconf CLK_TCK)

exec 9>/run/portcullis-bench-tls.lock
if ! flock -n 9; then
	echo "tls.sh: another tls bench run holds /run/portcullis-bench-tls.lock" >&2
	exit 1
fi

log() { echo "tls.sh: $*" >&2; }

topo_down() {
	local ns pids
	for ns in $CLI $FW $SRV; do
		pids=$(ip netns pids "$ns" 2>/dev/null || true)
		if [ -n "$pids" ]; then
			kill $pids 2>/dev/null || true
			sleep 0.3
			pids=$(ip netns pids "$ns" 2>/dev/null || true)
			[ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
		fi
		if ip netns list | grep -qw "^$ns"; then
			ip netns del "$ns" 2>/dev/null || true
		fi
	done
}

FWPID=
cleanup() {
	if [ -n "$FWPID" ]; then
		kill -TERM "$FWPID" 2>/dev/null || true
		wait_exit "$FWPID" 20 || kill -9 "$FWPID" 2>/dev/null || true
	fi
	topo_down
	rm -rf "$HOSTS_DIR"
	[ -d "$PIN_DIR" ] && rm -rf "$PIN_DIR"
	return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_exit PID SECONDS: 0 when PID has gone within SECONDS.
wait_exit() {
	local i
	for ((i = 0; i < $2 * 10; i++)); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.1
	done
	return 1
}

pin_napi() {
	local spec dev cpu pid pids tries ok
	for tries in $(seq 1 20); do
		ok=1
		for spec in tlfi:$FW_CPU tlfo:$FW_CPU tlc:$EP_CPU tlsv:$EP_CPU; do
			cpu=${spec#*:} dev=${spec%:*}
			pids=$(pgrep "^napi/$dev-" || true)
			if [ -z "$pids" ]; then ok=0; continue; fi
			for pid in $pids; do taskset -pc "$cpu" "$pid" >/dev/null; done
		done
		[ $ok = 1 ] && return 0
		sleep 0.1
	done
	log "some NAPI threads were not found (threaded NAPI off?)"
	return 1
}

topo_up() {
	topo_down
	local ns
	for ns in $CLI $FW $SRV; do
		ip netns add "$ns"
		ip -n "$ns" link set lo up
	done
	ip -n $CLI link add tlc address $MAC_C type veth peer name tlfi address $MAC_FI netns $FW
	ip -n $SRV link add tlsv address $MAC_S type veth peer name tlfo address $MAC_FO netns $FW
	ip -n $CLI addr add $CLIENT/24 dev tlc
	ip -n $FW addr add $FW_IN/24 dev tlfi
	ip -n $FW addr add $FW_OUT/24 dev tlfo
	ip -n $SRV addr add $ROUTER/24 dev tlsv
	ip -n $SRV addr add $SERVER/32 dev lo
	ip -n $SRV addr add $RESOLVER/32 dev lo
	for ns in $CLI:tlc $FW:tlfi $FW:tlfo $SRV:tlsv; do ip -n "${ns%:*}" link set "${ns#*:}" up; done
	ip -n $CLI route add default via $FW_IN
	ip -n $FW route add default via $ROUTER dev tlfo
	# The way back to the spoke: only plain forwarding uses it (the proxies and portcullis SNAT).
	ip -n $SRV route add 198.18.0.0/15 via $FW_OUT
	ip -n $CLI neigh replace $FW_IN lladdr $MAC_FI dev tlc nud permanent
	ip -n $FW neigh replace $CLIENT lladdr $MAC_C dev tlfi nud permanent
	ip -n $FW neigh replace $ROUTER lladdr $MAC_S dev tlfo nud permanent
	ip -n $SRV neigh replace $FW_OUT lladdr $MAC_FO dev tlsv nud permanent
	ip netns exec $FW sysctl -qw net.ipv4.ip_forward=1
	ip netns exec $CLI ethtool -K tlc gro on tso off tx off >/dev/null
	ip netns exec $SRV ethtool -K tlsv gro on tso off tx off >/dev/null
	ip netns exec $FW ethtool -K tlfi gro on >/dev/null
	ip netns exec $FW ethtool -K tlfo gro on >/dev/null
	ip netns exec $CLI sh -c 'echo 1 > /sys/class/net/tlc/threaded'
	ip netns exec $SRV sh -c 'echo 1 > /sys/class/net/tlsv/threaded'
	ip netns exec $FW sh -c 'echo 1 > /sys/class/net/tlfi/threaded; echo 1 > /sys/class/net/tlfo/threaded'
	pin_napi
}

# ---------- one-time material: CA, server certificate, objects, configs ----------
mkdir -p "$WORK"
RUN=$WORK/run-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RUN"
chmod 755 "$WORK" "$RUN"
PKI=$RUN/pki
mkdir -p "$PKI"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=portcullis bench throwaway CA" \
	-keyout "$PKI/ca.key" -out "$PKI/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=$NAME" -keyout "$PKI/srv.key" -out "$PKI/srv.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n' "$NAME" >"$PKI/ext"
openssl x509 -req -in "$PKI/srv.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -CAcreateserial -days 2 \
	-extfile "$PKI/ext" -out "$PKI/srv.pem" 2>/dev/null
# squid wants a certificate on an ssl-bump port even when it only splices.
cat "$PKI/ca.pem" "$PKI/ca.key" >"$PKI/squid.pem"
chmod 644 "$PKI"/*
WWW=$RUN/www
mkdir -p "$WWW"
head -c 1024 /dev/urandom >"$WWW/1k"
head -c $((100 * 1024 * 1024)) /dev/urandom >"$WWW/100m"
BIG_BYTES=$((100 * 1024 * 1024))
mkdir -p "$HOSTS_DIR"
printf '127.0.0.1 localhost\n%s %s\n' "$SERVER" "$NAME" >"$HOSTS_DIR/hosts"

sed -e "s#@RUN@#$RUN#g" -e "s#@SERVER@#$SERVER#g" -e "s#@NAME@#$NAME#g" "$here/tls/nginx.conf" >"$RUN/nginx.conf"
sed -e "s#@RUN@#$RUN#g" -e "s#@RESOLVER@#$RESOLVER#g" -e "s#@NAME@#$NAME#g" "$here/tls/haproxy.cfg" >"$RUN/haproxy.cfg"
sed -e "s#@RUN@#$RUN#g" -e "s#@RESOLVER@#$RESOLVER#g" -e "s#@NAME@#$NAME#g" -e "s#@PKI@#$PKI#g" \
	"$here/tls/squid.conf" >"$RUN/squid.conf"
sed -e "s#@RESOLVER@#$RESOLVER#g" -e "s#@NAME@#$NAME#g" "$here/tls/portcullis.yaml" >"$RUN/portcullis.yaml"

if [[ ",$VARIANTS," == *,portcullis,* ]] && [ -z "${PORTCULLIS_PREBUILT:-}" ] && [ "$PORTCULLIS" = "$root/target/release/portcullis" ]; then
	log "cargo build --release -p portcullis"
	(cd "$root" && cargo build --release --quiet -p portcullis)
fi
SQUID=$(command -v squid || true)
if [[ ",$VARIANTS," == *,squid,* ]] && ! { [ -n "$SQUID" ] && "$SQUID" -v | grep -q -- '--with-openssl'; }; then
	log "squid with OpenSSL (ssl_bump) not installed (apt-get install -y squid-openssl): squid skipped"
	VARIANTS=$(echo ",$VARIANTS," | sed 's/,squid,/,/; s/^,//; s/,$//')
fi
if [[ ",$VARIANTS," == *,haproxy,* ]] && ! command -v haproxy >/dev/null; then
	log "haproxy not installed (apt-get install -y haproxy): skipped"
	VARIANTS=$(echo ",$VARIANTS," | sed 's/,haproxy,/,/; s/^,//; s/,$//')
fi

# ---------- measurement helpers ----------
# FW_CPU: "wall-seconds idle-jiffies". /proc/stat's idle (+iowait) of a NO_HZ CPU is measured exactly,
# while its user/system/softirq are sampled at the tick and miss short bursts: busy = wall - idle.
cpu_snap() {
	local now
	now=$(date +%s.%N)
	awk -v c="cpu$FW_CPU" -v now="$now" '$1 == c { print now, $5 + $6 }' /proc/stat
}
# Jiffies (utime+stime) of the firewall's own tasks: its NAPI threads, ksoftirqd/FW_CPU and FWPID's tasks.
thread_ticks() {
	local pids p t sum=0
	pids="$(pgrep '^napi/tlf[io]-' || true) $(pgrep "^ksoftirqd/$FW_CPU\$" || true)"
	for p in $pids; do
		t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' /proc/$p/stat 2>/dev/null || echo 0)
		sum=$((sum + t))
	done
	if [ -n "$FWPID" ] && [ -d /proc/$FWPID ]; then
		for p in /proc/$FWPID/task/*/stat; do
			t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "$p" 2>/dev/null || echo 0)
			sum=$((sum + t))
		done
	fi
	echo $sum
}
wait_quiet() {
	# Up to 20 s for both cores >= 90 % idle over one second.
	local i a b
	for i in $(seq 1 20); do
		a=$(awk '/^cpu /{ print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
		sleep 1
		b=$(awk '/^cpu /{ print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
		if awk -v a="$a" -v b="$b" 'BEGIN { split(a, x); split(b, y); exit !((y[1] - x[1]) >= 0.9 * (y[2] - x[2])) }'; then
			return 0
		fi
	done
	log "machine not quiet after 20 s (load: $(cut -d' ' -f1-3 /proc/loadavg)); measuring anyway"
}
cli() { ip netns exec $CLI taskset -c "$EP_CPU" "$@"; }
CURL_OPTS=(--cacert "$PKI/ca.pem" -sS --max-time 30)

# ---------- firewall variants ----------
start_servers() {
	nsenter --net=/run/netns/$SRV taskset -c "$EP_CPU" dnsmasq --keep-in-foreground --no-resolv --no-hosts \
		--listen-address=$RESOLVER --bind-interfaces --port=53 --host-record=$NAME,$SERVER \
		--cache-size=0 --pid-file= --log-facility=- --user=root >"$POINT/dnsmasq.log" 2>&1 &
	nsenter --net=/run/netns/$SRV taskset -c "$EP_CPU" nginx -c "$RUN/nginx.conf" -g "pid $POINT/nginx.pid; error_log $POINT/nginx.err warn;" &
	local i
	for i in $(seq 1 50); do
		nsenter --net=/run/netns/$SRV ss -ltn 2>/dev/null | grep -q "$SERVER:443" && return 0
		sleep 0.1
	done
	log "nginx did not listen on $SERVER:443"
	return 1
}

tproxy_rules() { # PORT: what haproxy is told (transparent listener fed by nftables TPROXY)
	nsenter --net=/run/netns/$FW sh -c "ip rule add fwmark 1 lookup 100 && ip route add local 0.0.0.0/0 dev lo table 100"
	nsenter --net=/run/netns/$FW nft -f - <<-EOF
		table ip pctlsbench {
		  chain pre {
		    type filter hook prerouting priority mangle; policy accept;
		    iifname "tlfi" ip daddr != 198.18.0.0/15 tcp dport 443 tproxy to :$1 meta mark set 1 accept
		  }
		}
	EOF
}

start_fw() { # VARIANT; sets FWPID
	local v=$1 i
	FWPID=
	case $v in
	plain) ;;
	portcullis)
		mkdir -p "$POINT/state"
		cp "$RUN/portcullis.yaml" "$POINT/portcullis.yaml"
		nsenter --net=/run/netns/$FW taskset -c "$FW_CPU" "$PORTCULLIS" run --config "$POINT/portcullis.yaml" \
			--pin-dir "$PIN_DIR" --state-dir "$POINT/state" --flush >"$POINT/fw.out" 2>"$POINT/fw.err" &
		FWPID=$!
		for i in $(seq 1 600); do
			grep -q "ready (pid" "$POINT/fw.err" && break
			kill -0 $FWPID 2>/dev/null || { log "portcullis exited before ready:"; tail -20 "$POINT/fw.err" >&2; FWPID=; return 1; }
			sleep 0.1
		done
		grep -q "ready (pid" "$POINT/fw.err" || { log "portcullis not ready after 60 s"; return 1; }
		;;
	haproxy-xdp)
		clang-19 -O2 -target bpf -I"/usr/include/$(uname -m)-linux-gnu" -c "$here/bpf/xdp_pass.bpf.c" -o "$RUN/xdp_pass.o"
		rm -f /sys/fs/bpf/pctls_xdp_pass
		bpftool prog load "$RUN/xdp_pass.o" /sys/fs/bpf/pctls_xdp_pass type xdp
		nsenter --net=/run/netns/$FW bpftool net attach xdpdrv pinned /sys/fs/bpf/pctls_xdp_pass dev tlfi
		nsenter --net=/run/netns/$FW bpftool net attach xdpdrv pinned /sys/fs/bpf/pctls_xdp_pass dev tlfo
		rm -f /sys/fs/bpf/pctls_xdp_pass
		tproxy_rules 15002
		nsenter --net=/run/netns/$FW taskset -c "$FW_CPU" haproxy -db -f "$RUN/haproxy.cfg" >"$POINT/fw.out" 2>"$POINT/fw.err" &
		FWPID=$!
		;;
	haproxy)
		tproxy_rules 15002
		nsenter --net=/run/netns/$FW taskset -c "$FW_CPU" haproxy -db -f "$RUN/haproxy.cfg" >"$POINT/fw.out" 2>"$POINT/fw.err" &
		FWPID=$!
		;;
	squid)
		# squid intercept = NAT lookup of the original destination: nftables redirect (conntrack).
		nsenter --net=/run/netns/$FW nft -f - <<-EOF
			table ip pctlsbench {
			  chain pre {
			    type nat hook prerouting priority dstnat; policy accept;
			    iifname "tlfi" ip daddr != 198.18.0.0/15 tcp dport 443 redirect to :3130
			  }
			}
		EOF
		mkdir -p "$POINT/squid"
		chown proxy: "$POINT/squid" 2>/dev/null || true
		sed "s#@POINT@#$POINT#g" "$RUN/squid.conf" >"$POINT/squid.conf"
		nsenter --net=/run/netns/$FW taskset -c "$FW_CPU" "$SQUID" -N -f "$POINT/squid.conf" >"$POINT/fw.out" 2>"$POINT/fw.err" &
		FWPID=$!
		;;
	esac
	pin_napi
	# A check that the path works and the ClientHello carries the SNI, up to 15 s.
	for i in $(seq 1 30); do
		if cli curl "${CURL_OPTS[@]}" -o /dev/null -w '%{http_code}' "https://$NAME/1k" 2>>"$POINT/check.err" | grep -q 200; then
			return 0
		fi
		[ -z "$FWPID" ] || kill -0 $FWPID 2>/dev/null || break
		sleep 0.5
	done
	log "$v: https://$NAME/1k does not answer through the firewall"
	tail -5 "$POINT/check.err" >&2 || true
	tail -20 "$POINT/fw.err" >&2 || true
	return 1
}

stop_fw() {
	[ -n "$FWPID" ] || return 0
	kill -TERM $FWPID 2>/dev/null || true
	if ! wait_exit $FWPID 20; then
		log "firewall pid $FWPID did not exit 20 s after SIGTERM: SIGKILL"
		kill -9 $FWPID 2>/dev/null || true
	fi
	wait $FWPID 2>/dev/null || true
	FWPID=
}

# ---------- one point: VARIANT ROUND ----------
RESULTS=$RUN/results.tsv
printf 'variant\tround\tconns\tconn_s\terrors\tcore_us_conn\tthr_us_conn\tfw_busy_pct\tbulk_MBs\tcore_ns_B\tthr_ns_B\tp50_ms\tp99_ms\tlat_n\n' >"$RESULTS"

point() {
	local v=$1 r=$2
	POINT=$RUN/$v-r$r
	mkdir -p "$POINT"
	chmod 755 "$POINT"
	topo_up
	start_servers
	if ! start_fw "$v"; then
		printf '%s\t%s\tFAILED\n' "$v" "$r" >>"$RESULTS"
		stop_fw
		topo_down
		return 0
	fi
	# A filtering variant must really be in the path: alive, and a name without a rule must not pass
	# (otherwise the kernel's plain forwarding would be measured under its name).
	if [ "$v" != plain ]; then
		local why=
		if [ -z "$FWPID" ] || ! kill -0 "$FWPID" 2>/dev/null; then
			why="exited: $(tail -3 "$POINT/fw.err" 2>/dev/null | tr '\n' ' ')"
		elif cli curl -sk --max-time 5 --resolve "denied.lab.test:443:$SERVER" https://denied.lab.test/1k >/dev/null 2>&1; then
			why="a name without a rule got through: not in the path"
		fi
		if [ -n "$why" ]; then
			log "$v r$r: $why"
			printf '%s\t%s\tFAILED\n' "$v" "$r" >>"$RESULTS"
			stop_fw
			topo_down
			return 0
		fi
	fi
	wait_quiet
	# warm-up 1 s
	cli wrk -t1 -c"$CONNS" -d1s -H "Connection: close" "https://$NAME/1k" >/dev/null 2>&1 || true
	sleep 0.5
	local c0 c1 t0 t1 out reqs errs cps core thr busy
	c0=$(cpu_snap) t0=$(thread_ticks)
	out=$(cli wrk -t1 -c"$CONNS" -d"${WINDOW}s" -H "Connection: close" "https://$NAME/1k" 2>&1) || true
	c1=$(cpu_snap) t1=$(thread_ticks)
	echo "$out" >"$POINT/wrk.txt"
	reqs=$(echo "$out" | awk '/requests in/ { print $1 }')
	errs=$(echo "$out" | awk '/Socket errors/ { gsub(",", ""); print "connect=" $4 " read=" $6 " write=" $8 " timeout=" $10 } /Non-2xx/ { print "non2xx=" $NF }' | paste -sd' ')
	[ -n "$errs" ] || errs=0
	reqs=${reqs:-0}
	read -r cps core thr busy < <(awk -v a="$c0" -v b="$c1" -v t0="$t0" -v t1="$t1" -v n="$reqs" -v w="$WINDOW" -v hz="$CLK_TCK" 'BEGIN {
		split(a, x); split(b, y); dt = y[1] - x[1]; db = dt - (y[2] - x[2]) / hz; th = (t1 - t0) / hz
		if (n == 0) n = 1e-9
		printf "%.1f %.1f %.1f %.0f\n", n / w, db / n * 1e6, th / n * 1e6, 100 * db / (dt > 0 ? dt : 1) }')
	# single flow, 100 MiB
	local speed bcore bthr
	sleep 0.5
	c0=$(cpu_snap) t0=$(thread_ticks)
	speed=$(cli curl "${CURL_OPTS[@]}" -o /dev/null -w '%{speed_download} %{size_download}' "https://$NAME/100m" 2>>"$POINT/bulk.err" || echo "0 0")
	c1=$(cpu_snap) t1=$(thread_ticks)
	echo "$speed" >"$POINT/bulk.txt"
	read -r speed bcore bthr < <(awk -v s="$speed" -v a="$c0" -v b="$c1" -v t0="$t0" -v t1="$t1" -v hz="$CLK_TCK" -v big="$BIG_BYTES" 'BEGIN {
		split(s, q); split(a, x); split(b, y)
		if (q[2] != big) { print "0 0 0"; exit }
		printf "%.1f %.3f %.3f\n", q[1] / 1e6, ((y[1] - x[1]) - (y[2] - x[2]) / hz) / big * 1e9, (t1 - t0) / hz / big * 1e9 }')
	# latency: LAT_N sequential new connections (one curl, Connection: close, no TLS resumption on nginx)
	sleep 0.5
	cli curl "${CURL_OPTS[@]}" -o /dev/null -H "Connection: close" -w '%{http_code} %{time_total} %{time_connect} %{time_appconnect} %{time_starttransfer}\n' \
		"https://$NAME/1k?[1-$LAT_N]" >"$POINT/latency.txt" 2>>"$POINT/latency.err" || true
	local p50 p99 ln
	read -r p50 p99 ln < <(awk '$1 == 200 { print $2 * 1000 }' "$POINT/latency.txt" | sort -n | awk '{ v[NR] = $1 } END {
		if (NR == 0) { print "- - 0"; exit }
		i50 = int(NR * 0.50 + 0.999); i99 = int(NR * 0.99 + 0.999); if (i99 > NR) i99 = NR
		printf "%.3f %.3f %d\n", v[i50], v[i99], NR }')
	stop_fw
	if [ "$v" = portcullis ]; then
		grep -h "application proxy: {" "$POINT/fw.err" "$POINT/fw.out" >"$POINT/proxy-stats.txt" 2>/dev/null || true
		[ -s "$POINT/proxy-stats.txt" ] && log "portcullis r$r: $(cat "$POINT/proxy-stats.txt")"
		[ -d "$PIN_DIR" ] && log "portcullis left $PIN_DIR behind after --flush" && rm -rf "$PIN_DIR"
	fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$v" "$r" "$reqs" "$cps" "$errs" "$core" "$thr" "$busy" \
		"$speed" "$bcore" "$bthr" "$p50" "$p99" "$ln" >>"$RESULTS"
	log "$v r$r: $cps conn/s ($errs errors), $core µs/conn core, $thr µs/conn threads, fw busy $busy %; $speed MB/s, $bcore ns/B core; p50 $p50 ms p99 $p99 ms ($ln)"
	topo_down
}

{
	echo "date: $(date -u +%FT%TZ)"; echo "kernel: $(uname -r)"; echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
	echo "git: $(cd "$root" && git rev-parse --short HEAD) ($(cd "$root" && git status --short | wc -l) files changed in the tree)"
	echo "portcullis: $PORTCULLIS ($(stat -c %y "$PORTCULLIS" 2>/dev/null || echo absent))"
	nginx -v 2>&1; haproxy -v 2>/dev/null | head -1 || true; [ -z "$SQUID" ] || "$SQUID" -v | head -1; wrk -v 2>&1 | head -1 || true
	echo "rounds $ROUNDS, window ${WINDOW}s, $CONNS connections, latency $LAT_N requests"
} >"$RUN/env.txt"
START=$(date +%s)
IFS=, read -r -a VLIST <<<"$VARIANTS"
log "run dir $RUN; variants ${VLIST[*]}; $ROUNDS rounds"
for r in $(seq 1 "$ROUNDS"); do
	for v in "${VLIST[@]}"; do
		if [ $(($(date +%s) - START)) -gt 1800 ]; then
			log "30 min budget spent: no new points"
			break 2
		fi
		point "$v" "$r"
	done
done

# ---------- table: medians [min-max] per variant ----------
"$here/tls-table.sh" "$RESULTS" | tee "$RUN/table.md"
ln -sfn "$RUN" "$WORK/latest"
