#!/usr/bin/env bash
# What a join costs the store, and what the retention purge gives back: the
# EU router on SQLite takes joins from `joinload` (its conferences stay
# open), then the script marks those conferences ended 100 days ago and
# restarts the router, whose purge deletes everything past the default
# periods. Bytes in use (pages in use, not the file's size: SQLite keeps
# freed pages for reuse) are read with Python's sqlite3 before and after.
#
#   benches/store_size.sh                 # 32 concurrent, 10 s
#   SECONDS_EACH=2 benches/store_size.sh  # quick
#   BIN=/path/to/older/residency-relay PURGE=0 benches/store_size.sh
#                                         # joins only, with another build
#
# Loopback only; needs `cargo build --release` and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${SECONDS_EACH:-10}
CONCURRENCY=${CONCURRENCY:-32}
bin=${BIN:-target/release/residency-relay}
PURGE=${PURGE:-1}
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d /tmp/rr-store-size.XXXXXX)
. benches/dev_store.sh
trap 'dev_cleanup; rm -rf "$work"' EXIT
if [ "$PURGE" = 1 ]; then
    dev_config "$(printf '\n[retention]\npurge_interval_secs = 1\n')"
else
    dev_config
fi
in_use() { # bytes in pages in use, rows per table
    python3 - "$db" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
page = db.execute("PRAGMA page_size").fetchone()[0]
pages = db.execute("PRAGMA page_count").fetchone()[0]
free = db.execute("PRAGMA freelist_count").fetchone()[0]
rows = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        for t in ["conferences", "participants", "audit", "conference_relays"]}
print((pages - free) * page, pages * page, " ".join(f"{t}={n}" for t, n in rows.items()))
EOF
}

start_dev
"$bin" joinload --ca config/dev-router.crt --router https://127.0.2.1:8080 --api-key dev-acme-key \
    --concurrency "$CONCURRENCY" --seconds "$SECONDS_EACH" | grep '^join:' | tee "$work/join"
stop_dev
joins=$(awk '{print $2}' "$work/join")
read -r used file rows < <(in_use)
echo "after $joins joins: $used bytes in use ($((used / joins)) per join), file $file bytes; $rows"
[ "$PURGE" = 1 ] || exit 0

# Every conference ended 100 days ago: past every default period.
python3 - "$db" <<'EOF'
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1])
db.execute("UPDATE conferences SET ended = ?", (int(time.time()) - 100 * 86400,))
db.commit()
EOF
start_dev
# Until every conference that had ended is gone (dev makes a new demo
# conference at each start, which stays).
for _ in $(seq 1 600); do
    left=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT count(*) FROM conferences WHERE ended IS NOT NULL').fetchone()[0])" "$db")
    [ "$left" = 0 ] && break
    sleep 0.5
done
[ "$left" = 0 ] || { echo "the purge did not finish in 5 minutes" >&2; exit 1; }
purged=$(curl -sf --cacert config/dev-router.crt https://127.0.2.1:8080/metrics | grep '^rr_router_records_purged_total' | awk '{s += $2} END {print s}')
stop_dev
read -r used file rows < <(in_use)
echo "after the purge ($purged rows deleted): $used bytes in use, file $file bytes (freed pages are reused); $rows"
