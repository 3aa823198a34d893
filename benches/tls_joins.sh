#!/usr/bin/env bash
# What TLS costs a join: the EU router of `dev` serving HTTPS (its dev
# certificate, ECDSA P-256, TLS 1.3) against the same router on plain HTTP
# (`plain_http = true`), side by side and interleaved for ROUNDS rounds.
# `joinload` opens a connection per join, as a participant's first request
# does; its TLS sessions resume (one client configuration for the run).
#
#   benches/tls_joins.sh                              # 5 rounds, 32 concurrent, 5 s
#   ROUNDS=1 SECONDS_EACH=2 benches/tls_joins.sh      # quick
#
# Loopback only; needs `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
SECONDS_EACH=${SECONDS_EACH:-5}
CONCURRENCY=${CONCURRENCY:-32}
bin=target/release/residency-relay
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d /tmp/rr-tls-joins.XXXXXX)
. benches/dev_store.sh
plain="config/bench-$(basename "$work")-plain.toml"
trap 'dev_cleanup; rm -f "$plain"; rm -rf "$work"' EXIT
dev_config
# Every router on plain HTTP: no certificate, http:// URLs.
sed -e '/^tls_cert = /d' -e '/^tls_key = /d' \
    -e 's|^url = "https://\(.*\)"|url = "http://\1"\nplain_http = true|' \
    "$config" > "$plain"

run_case() { # name, config, url
    rm -f "$db" "$db-wal" "$db-shm"
    start_dev "$2" "$3"
    local line
    line=$("$bin" joinload --ca config/dev-router.crt --router "$3" --api-key dev-acme-key \
        --concurrency "$CONCURRENCY" --seconds "$SECONDS_EACH" | grep '^join:')
    echo "$1 | $line"
    stop_dev
}

echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $CONCURRENCY concurrent, $SECONDS_EACH s per case; a connection per join"
for round in $(seq 1 "$ROUNDS"); do
    echo "# round $round"
    run_case https "$config" https://127.0.2.1:8080
    run_case "plain http" "$plain" http://127.0.2.1:8080
done
