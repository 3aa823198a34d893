#!/usr/bin/env bash
# Join throughput of the EU router: one router on SQLite, one router on
# PostgreSQL, and two replicas on PostgreSQL with the load spread over both,
# side by side in one run, interleaved for ROUNDS rounds (the machine's
# throughput drifts between minutes; interleaving spreads that over all
# three). Each case starts a fresh `dev` on a fresh store.
#
#   benches/joins.sh            # 3 rounds, 32 concurrent, 10 s each
#   ROUNDS=1 SECONDS_EACH=3 CONCURRENCY=8 benches/joins.sh   # quick
#   SYNC=off benches/joins.sh   # PostgreSQL with synchronous_commit=off
#
# PostgreSQL is a throwaway server of this script (Debian's postgresql
# package: initdb and pg_ctl as the postgres user, data in a temporary
# directory, port 15432), with fsync on and synchronous_commit=$SYNC (on by
# default: every commit waits for the WAL flush; SQLite runs WAL with
# synchronous=NORMAL, which does not flush each commit — `SYNC=off` is the
# comparable durability). Loopback only; needs `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
SECONDS_EACH=${SECONDS_EACH:-10}
CONCURRENCY=${CONCURRENCY:-32}
SYNC=${SYNC:-on}
# Below the ephemeral port range (32768-60999 here), so no outgoing
# connection of an earlier step can hold it.
PORT=${PG_PORT:-15432}
bin=target/release/residency-relay
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
[ -x "$pgbin/initdb" ] || { echo "needs Debian's postgresql package" >&2; exit 1; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

work=$(mktemp -d /tmp/rr-joins.XXXXXX)
chmod 711 "$work"
mkdir "$work/pg"
if [ "$(id -u)" = 0 ]; then chown postgres: "$work/pg"; fi
dev_pid=""
cleanup() {
    [ -n "$dev_pid" ] && kill "$dev_pid" 2>/dev/null && wait "$dev_pid" 2>/dev/null
    as_pg "$pgbin/pg_ctl" -D "$work/pg/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$work" config/bench-joins*.toml
}
trap cleanup EXIT
as_pg "$pgbin/initdb" -D "$work/pg/data" -U rr -A trust -E UTF8 >/dev/null
if ! as_pg "$pgbin/pg_ctl" -D "$work/pg/data" -l "$work/pg/pg.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $work/pg -c synchronous_commit=$SYNC -c max_connections=200" \
    start >/dev/null; then
    echo "PostgreSQL did not start; its log:" >&2
    cat "$work/pg/pg.log" >&2 || true
    ss -ltnp 2>/dev/null | grep ":$PORT " >&2 || true
    exit 1
fi
url="postgres://rr@127.0.0.1:$PORT/rr"

# The dev config with relay capacities and per-address limits raised: one
# load tool on one address stands in for thousands of participants.
# The SQLite store in this run's directory, not the dev one in data/.
sed -e 's/max_participants = [0-9_]*/max_participants = 1000000/' \
    -e "s|^store = \"../data/de-fra-router.sqlite\"|store = \"$work/de-fra-router.sqlite\"|" \
    config/dev.toml > config/bench-joins.toml
printf '\n[limits]\njoins_per_address_per_minute = 100000000\nconference_max_participants = 1000000\nrelay_connections_per_address = 100000\n' >> config/bench-joins.toml
# One router on PostgreSQL.
sed -e "s|^store = \"$work/de-fra-router.sqlite\"|store = \"$url\"\nstore_country = \"DE\"|" \
    config/bench-joins.toml > config/bench-joins-pg.toml

wait_ready() {
    for _ in $(seq 1 200); do
        if curl -sf --cacert config/dev-router.crt "$1/readyz" >/dev/null 2>&1 \
            && curl -sf --cacert config/dev-router.crt -H 'Authorization: Bearer dev-admin-key' "$1/v1/admin/relays" | grep -q '"healthy"'; then
            sleep 2
            return 0
        fi
        sleep 0.1
    done
    echo "router at $1 did not become ready" >&2
    exit 1
}

fresh_stores() {
    rm -f "$work"/de-fra-router.sqlite*
    as_pg "$pgbin/dropdb" -h 127.0.0.1 -p "$PORT" -U rr --if-exists rr 2>/dev/null
    as_pg "$pgbin/createdb" -h 127.0.0.1 -p "$PORT" -U rr rr
}

run_case() { # name, dev args..., -- routers
    local name=$1
    shift
    local args=()
    while [ "$1" != "--" ]; do args+=("$1"); shift; done
    shift
    local routers=$1
    fresh_stores
    RUST_LOG=warn "$bin" dev "${args[@]}" >"$work/dev.out" 2>&1 &
    dev_pid=$!
    for r in ${routers//,/ }; do wait_ready "$r"; done
    local line
    line=$("$bin" joinload --ca config/dev-router.crt --router "$routers" --api-key dev-acme-key \
        --concurrency "$CONCURRENCY" --seconds "$SECONDS_EACH" | grep '^join:')
    echo "$name | $line"
    kill "$dev_pid"
    wait "$dev_pid" 2>/dev/null || true
    dev_pid=""
}

echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}'), synchronous_commit=$SYNC; $CONCURRENCY concurrent, $SECONDS_EACH s per case"
for round in $(seq 1 "$ROUNDS"); do
    echo "# round $round"
    run_case "sqlite, 1 router" --config config/bench-joins.toml -- https://127.0.2.1:8080
    run_case "postgres, 1 router" --config config/bench-joins-pg.toml -- https://127.0.2.1:8080
    run_case "postgres, 2 replicas" --config config/bench-joins.toml --store "$url" \
        -- https://127.0.2.1:8080,https://127.0.2.4:8080
done
