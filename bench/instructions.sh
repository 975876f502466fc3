#!/usr/bin/env bash
# Counts the user-space instructions a server executes per IAMAT, with valgrind's callgrind:
# a figure that, unlike times on a shared machine, repeats to within a few instructions from
# one run to the next, so that a change of a few percent in the server's own code can be
# seen. It leaves out the kernel (the system calls, which are most of a request's time; see
# compare.sh for those). The echo reference (`herd bench echo-server`) is counted in the same
# run, as the floor: what reading a line and writing one costs through the same runtime.
#
#   bash bench/instructions.sh                       # the release build
#   bash bench/instructions.sh OLD_BINARY NEW_BINARY # two builds, side by side
#
# Each server runs alone under callgrind on 127.0.0.1 (about 50 times slower than normal),
# its counters zeroed once it listens; `herd bench iamat --conns 50` (a distinct client per
# IAMAT, so the store grows as it would) loads it for DURATION seconds; the counters are
# dumped and the server stopped. About 15 s per binary.
#
# Environment: DURATION (seconds of load, 10), PORT (17150), SKIP_BUILD=1 (use the release
# binary as it is). Needs valgrind (`apt-get install valgrind`).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
PORT=${PORT:-17150}
ADDR=127.0.0.1:$PORT
LOAD=target/release/herd

if ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null; then
    echo "valgrind (with callgrind_control) is needed: apt-get install valgrind" >&2
    exit 1
fi
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release --quiet
fi
BINS=("$@")
if [[ ${#BINS[@]} == 0 ]]; then
    BINS=("$LOAD")
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/herd-instructions.XXXXXX")
SERVER=
cleanup() {
    if [[ -n $SERVER ]]; then
        kill "$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$TMP/one.toml" <<EOF
[places]
url = "http://127.0.0.1:9/nearbysearch/json"

[log]
dir = "$TMP/logs"

[[nodes]]
name = "Clark"
addr = "$ADDR"
EOF

# count NAME TAG COMMAND...: runs COMMAND (a server on ADDR) under callgrind, loads it,
# and prints its instructions per IAMAT (in PER_REQUEST too). Its files are $TMP/TAG.*.
count() {
    local name=$1 tag=$TMP/$2
    shift 2
    local out=$tag.callgrind
    valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >"$tag.out" 2>"$tag.err" &
    SERVER=$!
    local _
    for _ in $(seq 300); do
        if grep -q "listening on" "$tag.out" 2>/dev/null; then
            break
        fi
        if ! kill -0 "$SERVER" 2>/dev/null; then
            echo "$name did not start:" >&2
            cat "$tag.err" >&2
            exit 1
        fi
        sleep 0.1
    done
    callgrind_control --zero "$SERVER" >/dev/null 2>&1
    local json
    json=$(timeout $((DURATION + 60)) "$LOAD" bench iamat --addr "$ADDR" --conns 50 \
        --duration "$DURATION" --json)
    callgrind_control --dump "$SERVER" >/dev/null 2>&1
    kill "$SERVER"
    wait "$SERVER" 2>/dev/null || true
    SERVER=
    local requests errors instructions
    requests=$(sed -n 's/.*"count":\([0-9]*\).*/\1/p' <<<"$json")
    errors=$(sed -n 's/.*"errors":\([0-9]*\).*/\1/p' <<<"$json")
    # The dump after zeroing is the first numbered part.
    instructions=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$out.1" | head -n 1)
    if [[ -z $requests || $requests == 0 || -z $instructions ]]; then
        echo "$name: no figure (requests '${requests}', instructions '${instructions}')" >&2
        exit 1
    fi
    PER_REQUEST=$((instructions / requests))
    printf '  %-28s %9s %8s %14s %10s\n' "$name" "$requests" "$errors" "$instructions" "$PER_REQUEST"
}

echo "user-space instructions per IAMAT under callgrind, ${DURATION}s of --conns 50"
printf '  %-28s %9s %8s %14s %10s\n' server requests errors instructions per-IAMAT
count echo echo "$LOAD" bench echo-server --addr "$ADDR"
ECHO=$PER_REQUEST
for i in "${!BINS[@]}"; do
    rm -rf "$TMP/logs"
    count "${BINS[$i]}" "herd$i" "${BINS[$i]}" run Clark -c "$TMP/one.toml"
    echo "    = $(awk -v a="$PER_REQUEST" -v b="$ECHO" 'BEGIN { printf "%.2f", a / b }') x the echo's"
done
