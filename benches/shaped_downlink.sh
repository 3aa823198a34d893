#!/usr/bin/env bash
# One subscriber's downlink limited, QUIC against WebSocket: latency and
# loss of what reaches it (docs/benchmarks.md, "WebSocket").
#
# Inside a network namespace of its own (root; loopback only), relay
# de-fra-1 and a loadtest of one publisher (127.0.0.9) and one subscriber
# (127.0.0.10); an htb class matched by `u32 match ip dst 127.0.0.10`
# limits what the subscriber receives. For each limit (kbit/s; 0 = none)
# and transport, one loadtest of SECS seconds: 1.5 Mbit/s of 30 fps video
# and 50 kbit/s of audio offered. The limited path queues at most 200 ms
# of its rate, in 1,500-byte packets.
#
#   [RELAY_ARGS=...] benches/shaped_downlink.sh [LIMITS] [SECS]   e.g. "0 2000 1000" 20
#
# Needs `cargo build --release` first.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${RR_BIN:-target/release/residency-relay}
[ -x "$bin" ] || { echo "no $bin: run cargo build --release first" >&2; exit 1; }
limits=${1:-"0 2000 1000"}
secs=${2:-20}
ns=rr-shaped-$$
ip netns add "$ns"
cleanup() { ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true; sleep 0.5; ip netns del "$ns" 2>/dev/null || true; }
trap cleanup EXIT
in_ns() { ip netns exec "$ns" "$@"; }
in_ns ip link set lo up
# Packets the size of the Internet's, not loopback's 64 KiB, and no
# segmentation offload: a 64 KiB TCP super-packet would reach the
# bottleneck's queue as one and be dropped whole.
in_ns ip link set lo mtu 1500 gso_max_segs 1 gso_max_size 1500
# The relay listens on 127.0.1.1 (the dev config); loopback in the
# namespace answers for all of 127.0.0.0/8.
in_ns tc qdisc add dev lo root handle 1: htb default 10
in_ns tc class add dev lo parent 1: classid 1:10 htb rate 10gbit quantum 60000
shape() { # shape KBIT (0: none)
    in_ns tc filter del dev lo parent 1: 2>/dev/null || true
    in_ns tc class del dev lo classid 1:20 2>/dev/null || true
    [ "$1" = 0 ] && return 0
    in_ns tc class add dev lo parent 1: classid 1:20 htb rate "${1}kbit" ceil "${1}kbit"
    # The bottleneck holds 200 ms of its rate (lo's default queue would be
    # 1,000 packets: seconds at these rates).
    in_ns tc qdisc add dev lo parent 1:20 handle 20: bfifo limit $(($1 * 1000 / 8 / 5))
    in_ns tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip dst 127.0.0.10/32 flowid 1:20
}
# RELAY_ARGS: more arguments for the relay (e.g. --queue-packets 32).
# shellcheck disable=SC2086
RUST_LOG=warn in_ns "$bin" relay --config config/dev.toml --id de-fra-1 ${RELAY_ARGS:-} >/dev/null 2>&1 &
for _ in $(seq 1 100); do
    in_ns bash -c '(exec 3<>/dev/tcp/127.0.1.1/9090) 2>/dev/null' && break
    sleep 0.1
done
printf '%-8s %-10s %-10s %-12s %-24s %s\n' limit transport loss "seq gaps" "latency p50/p99/max ms" "relay CPU"
for limit in $limits; do
    shape "$limit"
    for transport in quic websocket; do
        out=$(in_ns "$bin" loadtest --config config/dev.toml --relay de-fra-1 \
            --participants 2 --publishers 1 --sources 2 --bind-ip 127.0.0.9 \
            --duration "$secs" --transport "$transport" 2>&1) || { echo "$out" >&2; exit 1; }
        loss=$(sed -n 's/^loss *//p' <<<"$out")
        gaps=$(sed -n 's/^sequence gaps *//p' <<<"$out")
        lat=$(sed -n 's/^latency p50 \/ p99 \/ max *//p' <<<"$out")
        cpu=$(sed -n 's/^relay CPU *//p' <<<"$out")
        printf '%-8s %-10s %-10s %-12s %-24s %s\n' "${limit:-none}" "$transport" "$loss" "$gaps" "$lat" "$cpu"
    done
done
