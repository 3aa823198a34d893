#!/usr/bin/env bash
# The router's API description against the router itself: a bounded,
# property-based run of schemathesis (from PyPI, pinned, in a virtualenv
# under target/) against GET /v1/openapi.json of one router of the dev
# config, started here on addresses of its own with a store in a temporary
# directory. It fails on any disagreement — a request the description
# admits that the server refuses, one it does not admit that the server
# accepts, a status or answer the description does not name — on any 5xx,
# and on any connection the server drops. Loopback only.
#
#   tests/schemathesis/run.sh [BINARY] [SECONDS]
#
# BINARY defaults to target/release/residency-relay (`cargo bench --no-run`
# leaves it); SECONDS, the fuzzing budget, to 100. CI runs it.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
bin=${1:-target/release/residency-relay}
budget=${2:-100}
[ -x "$bin" ] || { echo "no $bin: run cargo bench --no-run first" >&2; exit 1; }
version=4.32.5
venv=target/tmp/schemathesis-venv
if ! "$venv/bin/st" --version 2>/dev/null | grep -qx "st, version $version"; then
    if ! python3 -c 'import ensurepip' 2>/dev/null; then
        SUDO=""
        [ "$(id -u)" = 0 ] || SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$version"
fi
# Addresses below the ephemeral port range, inside the dev certificate's
# names (127.0.0.1).
addr=${RR_ST_ADDR:-127.0.0.1:18080}
relay_addr=${RR_ST_RELAY_ADDR:-127.0.0.1:18081}
dir=$(mktemp -d)
router=
cleanup() {
    [ -n "$router" ] && kill "$router" 2>/dev/null && wait "$router" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
cp -r config regions "$dir"/
sed -i -e "s/127\.0\.2\.1:8080/$addr/g" -e "s/127\.0\.2\.1:8081/$relay_addr/g" "$dir/config/dev.toml"
RUST_LOG=warn "$bin" router --config "$dir/config/dev.toml" --id de-fra-router >"$dir/router.log" 2>&1 &
router=$!
# The records the path parameters are pinned to: conference A with a
# waiting room, a participant P waiting in it and a participant W turned
# away (its poll answers at once); conference E for /end (410, as
# described, from its second call on).
"$venv/bin/python" "$root/tests/schemathesis/fixture.py" "https://$addr" "$root/config/dev-router.crt" \
    "$dir/schemathesis.toml" "$budget"
echo "schemathesis $version against https://$addr/v1/openapi.json for $budget s"
if ! (cd "$dir" && "$root/$venv/bin/st" --config-file schemathesis.toml run \
        "https://$addr/v1/openapi.json" --no-color --seed 1 \
        --report junit --report-dir "$root/target/tmp/schemathesis"); then
    echo "the router's log:" >&2
    tail -n 40 "$dir/router.log" >&2
    exit 1
fi
