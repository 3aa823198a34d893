#!/usr/bin/env bash
# The `hostile` load with every router and relay of config/dev.toml in a
# process of its own (as production runs them), so that the router's and
# each relay's RSS and descriptors are measured apart. Extra arguments go
# to `hostile`. Loopback only.
#
#   cargo build --release && benches/hostile-separate.sh --seconds 15 --ramp 8
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/residency-relay
config=config/dev.toml
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
for r in de-fra-router us-nyc-router ch-zrh-router; do
    RUST_LOG=warn "$bin" router --config "$config" --id "$r" 2>>target/hostile-router-"$r".log &
    pids+=($!)
done
declare -A relay_pid
for r in de-fra-1 de-ber-1 ie-dub-1 us-nyc-1 ch-zrh-1 nl-ams-1; do
    RUST_LOG=warn RESIDENCY_RELAY_CREDENTIAL="dev-relay-$r" "$bin" relay --config "$config" --id "$r" 2>>target/hostile-relay-"$r".log &
    pids+=($!)
    relay_pid[$r]=$!
done
# Until the Frankfurt router calls the EU relays healthy.
for _ in $(seq 1 100); do
    healthy=$(curl -s --cacert config/dev-router.crt -H 'Authorization: Bearer dev-admin-key' https://127.0.2.1:8080/v1/admin/relays | grep -o '"health":"healthy"' | wc -l || true)
    [ "$healthy" -ge 6 ] && break
    sleep 0.2
done
"$bin" hostile --pid "${pids[0]}" --pid "${relay_pid[de-fra-1]}" --pid "${relay_pid[ie-dub-1]}" "$@"
