# Sourced by the benches that run `dev` with the EU router on a SQLite store
# of their own (benches/store_size.sh, benches/purge_joins.sh). Expects `bin`
# (the residency-relay binary) and `work` (the run's directory); defines
# `db` (the EU router's store), `config` (the run's config), `dev_pid`, and:
#
#   dev_config [EXTRA]   writes $config: config/dev.toml with relay capacities
#                        and per-address limits raised (one load tool on one
#                        address stands in for thousands of participants),
#                        the EU router's store at $db, then EXTRA (TOML)
#   start_dev [CONFIG [URL]]  runs `dev` on CONFIG (default $config) until
#                        the EU router at URL (default https://127.0.2.1:8080)
#                        lists a healthy relay (its output in $work/dev.out)
#   stop_dev             stops it
#
# The caller's EXIT trap calls `dev_cleanup`.
db="$work/de-fra-router.sqlite"
config="config/bench-$(basename "$work").toml"
dev_pid=""

dev_cleanup() {
    [ -n "$dev_pid" ] && kill "$dev_pid" 2>/dev/null && wait "$dev_pid" 2>/dev/null
    rm -f "$config"
}

dev_config() {
    sed -e 's/max_participants = [0-9_]*/max_participants = 1000000/' \
        -e "s|^store = \"../data/de-fra-router.sqlite\"|store = \"$db\"|" \
        config/dev.toml > "$config"
    printf '\n[limits]\njoins_per_address_per_minute = 100000000\nconference_max_participants = 1000000\nrelay_connections_per_address = 100000\n%s' "${1:-}" >> "$config"
}

start_dev() {
    RUST_LOG=warn "$bin" dev --config "${1:-$config}" >"$work/dev.out" 2>&1 &
    dev_pid=$!
    for _ in $(seq 1 300); do
        if curl -sf --cacert config/dev-router.crt -H 'Authorization: Bearer dev-admin-key' "${2:-https://127.0.2.1:8080}/v1/admin/relays" 2>/dev/null | grep -q '"healthy"'; then
            return 0
        fi
        sleep 0.05
    done
    echo "the dev router did not become ready" >&2
    exit 1
}

stop_dev() { kill "$dev_pid"; wait "$dev_pid" 2>/dev/null || true; dev_pid=""; }
