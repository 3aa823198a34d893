#!/usr/bin/env bash
# The smallest case of every load tool and of the e2e bench, once, so a tool
# that breaks is caught the day it breaks (CI runs this; the figures it
# prints are not benchmarks). Needs `cargo bench --no-run` first, which
# leaves target/release/residency-relay. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/residency-relay
[ -x "$bin" ] || { echo "no $bin: run cargo bench --no-run first" >&2; exit 1; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -f config/smoke.toml; }
trap cleanup EXIT
wait_port() {
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    exit 1
}
expect() { # expect FILE PATTERN
    grep -q -- "$2" "$1" || { cat "$1" >&2; echo "smoke: '$2' missing from the output above" >&2; exit 1; }
}
out=$(mktemp -d)

echo "smoke: loadtest against one relay"
RUST_LOG=warn "$bin" relay --config config/dev.toml --id de-fra-1 --workers 2 &
pids+=($!)
wait_port 127.0.1.1:9090
"$bin" loadtest --config config/dev.toml --relay de-fra-1 --conferences 2 --participants 3 \
    --publishers 1 --duration 1 >"$out/loadtest" 2>&1
expect "$out/loadtest" "relay efficiency"
"$bin" loadtest --config config/dev.toml --relay de-fra-1 --conferences 1 --participants 3 \
    --publishers 1 --duration 1 --transport websocket >"$out/loadtest-ws" 2>&1
expect "$out/loadtest-ws" "over Websocket"
expect "$out/loadtest-ws" "relay efficiency"
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'

echo "smoke: joinload, cascadeload, overload, hostile against dev"
sed -e 's/max_participants = [0-9_]*/max_participants = 1000000/' config/dev.toml >config/smoke.toml
printf '\n[limits]\njoins_per_address_per_minute = 100000000\nconference_max_participants = 1000000\nrelay_connections_per_address = 100000\n' >>config/smoke.toml
RUST_LOG=warn "$bin" dev --config config/smoke.toml >"$out/dev" 2>&1 &
pids+=($!)
wait_port 127.0.2.1:8080
wait_port 127.0.1.6:9090
sleep 2
"$bin" joinload --ca config/dev-router.crt --router https://127.0.2.1:8080 --api-key dev-acme-key --concurrency 2 --seconds 1 \
    >"$out/joinload" 2>&1
expect "$out/joinload" "answered 200"
"$bin" cascadeload --config config/smoke.toml --subscribers 3 --pps 20 --seconds 1 >"$out/cascadeload" 2>&1
expect "$out/cascadeload" "three relays"
"$bin" overload --ca config/dev-router.crt --inside 20 --newcomers 5 --rate 20 --seconds 2 >"$out/overload" 2>&1
expect "$out/overload" "join attempts"
"$bin" hostile --config config/smoke.toml --idle 200 --idle-sources 4 --stalled 4 \
    --initials-per-second 20 --join-rate 2 --seconds 2 --ramp 1 >"$out/hostile" 2>&1
expect "$out/hostile" "joins served"
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'

echo "smoke: joins on SQLite, on PostgreSQL and on two replicas (dev --store)"
ROUNDS=1 SECONDS_EACH=1 CONCURRENCY=2 benches/joins.sh >"$out/joins" 2>&1
expect "$out/joins" "sqlite, 1 router | join:"
expect "$out/joins" "postgres, 1 router | join:"
expect "$out/joins" "postgres, 2 replicas | join:"

echo "smoke: e2e (fan-out N = 10, memory 200 idle, idle relay 100 participants)"
E2E_QUICK=1 cargo bench --locked --bench e2e >"$out/e2e" 2>&1
expect "$out/e2e" "KiB per participant"
expect "$out/e2e" "% of one core"
echo "smoke: browser bench (2 browsers without and with end-to-end encryption, 2 native clients, 3 s each)"
E2E_QUICK=1 cargo bench --locked --bench browser >"$out/browser" 2>&1
expect "$out/browser" "capture-to-render"
expect "$out/browser" "relay CPU per participant, webtransport / native"
expect "$out/browser" "end-to-end encrypted / not"
expect "$out/browser" "datagrams that did not decrypt: 0; pages showing the end-to-end encrypted mark: 2 of 2"
echo "smoke: every load tool ran"
