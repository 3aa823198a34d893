#!/usr/bin/env bash
# Joins while the retention purge runs, against joins on the same store
# with nothing to purge, side by side and interleaved for ROUNDS rounds.
# Both cases start the EU router of `dev` on a SQLite store holding LINES
# audit lines of one conference: in "purging" it ended 40 days ago (past
# the 30-day audit period: the purge deletes them while `joinload` runs),
# in "idle" it ended yesterday (nothing to delete). The purge starts 1 s
# after the router; joinload runs SECONDS_EACH s from then on.
#
#   benches/purge_joins.sh                         # 3 rounds, 32 concurrent, 3 M lines
#   ROUNDS=1 LINES=200000 SECONDS_EACH=2 benches/purge_joins.sh   # quick
#
# Loopback only; needs `cargo build --release` and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
LINES=${LINES:-3000000}
SECONDS_EACH=${SECONDS_EACH:-5}
CONCURRENCY=${CONCURRENCY:-32}
bin=target/release/residency-relay
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d /tmp/rr-purge-joins.XXXXXX)
. benches/dev_store.sh
trap 'dev_cleanup; rm -rf "$work"' EXIT
dev_config "$(printf '\n[retention]\npurge_interval_secs = 1\n')"

# A store with the router's schema, then the lines (one conference).
start_dev
stop_dev
python3 - "$db" "$LINES" <<'EOF'
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1])
n = int(sys.argv[2])
now = int(time.time())
db.execute("INSERT INTO conferences (id, tenant, jurisdiction, host_token_sha256, locked, waiting_room, created, ended) VALUES ('eu-aaaaaaaaaaaaaaaaaaaaaaaaaa', 'acme', 'eu', zeroblob(32), 0, 0, ?, ?)", (now - 50 * 86400, now - 40 * 86400))
db.executemany("INSERT INTO audit (time, conference, event, detail) VALUES (?, 'eu-aaaaaaaaaaaaaaaaaaaaaaaaaa', 'join_accepted', '{}')", ((now - 40 * 86400,) for _ in range(n)))
db.commit()
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
EOF
cp "$db" "$work/purging.sqlite"
python3 - "$work/purging.sqlite" "$work/idle.sqlite" <<'EOF'
import shutil, sqlite3, sys, time
shutil.copy(sys.argv[1], sys.argv[2])
db = sqlite3.connect(sys.argv[2])
db.execute("UPDATE conferences SET ended = ?", (int(time.time()) - 86400,))
db.commit()
EOF

run_case() { # name
    rm -f "$db" "$db-wal" "$db-shm"
    cp "$work/$1.sqlite" "$db"
    start_dev
    local line purged
    line=$("$bin" joinload --ca config/dev-router.crt --router https://127.0.2.1:8080 --api-key dev-acme-key \
        --concurrency "$CONCURRENCY" --seconds "$SECONDS_EACH" | grep '^join:')
    purged=$(curl -sf --cacert config/dev-router.crt https://127.0.2.1:8080/metrics | grep '^rr_router_records_purged_total{kind="audit"' | awk '{print $2}')
    echo "$1 | $line | audit lines purged by the end: $purged"
    stop_dev
}

echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $LINES audit lines; $CONCURRENCY concurrent, $SECONDS_EACH s per case"
for round in $(seq 1 "$ROUNDS"); do
    echo "# round $round"
    run_case purging
    run_case idle
done
