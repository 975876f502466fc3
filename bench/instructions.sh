#!/usr/bin/env bash
# Counts the user-space instructions a server executes per request, with valgrind's
# callgrind: a figure that, unlike times on a shared machine, repeats to within ~0.2% from
# one run to the next, so that a change of 1% in the server's own code can be seen. It
# leaves out the kernel (the system calls, which are most of a request's time; see
# compare.sh for those).
#
#   bash bench/instructions.sh                       # the release build
#   bash bench/instructions.sh OLD_BINARY NEW_BINARY # two builds, side by side
#
# Three counts per binary:
# - per IAMAT at one server, loaded by `herd-bench iamat --conns 50` (a distinct client per
#   IAMAT, so the store grows as it would), against the echo reference (`herd-bench
#   echo-server`) counted the same way in the same run: the floor, what reading a line and
#   writing one costs through the same runtime;
# - per IAMAT at the middle of a chain (Bailey - Bona - Campbell, Bona under callgrind, the
#   other two run normally, the same load on Bona): what flooding adds;
# - per record at the end of that chain (Campbell under callgrind): what taking a
#   neighbor's record costs.
# The server under callgrind runs about 50 times slower than normal; its counters are
# zeroed once it is ready and dumped when the load is over. About a minute per binary.
#
# Environment: DURATION (seconds of load, 10), PORT_BASE (first of four ports, 17150),
# SKIP_BUILD=1 (use the release binaries as they are). Needs valgrind (`apt-get install
# valgrind`). Everything listens on 127.0.0.1 and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
PORT_BASE=${PORT_BASE:-17150}
ADDR=127.0.0.1:$PORT_BASE
BAILEY_ADDR=127.0.0.1:$((PORT_BASE + 1))
BONA_ADDR=127.0.0.1:$((PORT_BASE + 2))
CAMPBELL_ADDR=127.0.0.1:$((PORT_BASE + 3))
LOAD=target/release/herd-bench

if ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null; then
    echo "valgrind (with callgrind_control) is needed: apt-get install valgrind" >&2
    exit 1
fi
BINS=("$@")
if [[ ${#BINS[@]} == 0 ]]; then
    BINS=(target/release/herd)
fi

SCRIPT=instructions START_WAIT_S=30
# shellcheck source=bench/servers.sh
source bench/servers.sh
build_release

herd_config "$TMP/logs" "" "Clark=$ADDR" >"$TMP/one.toml"
herd_config "$TMP/logs" '[["Bailey", "Bona"], ["Bona", "Campbell"]]' \
    "Bailey=$BAILEY_ADDR" "Bona=$BONA_ADDR" "Campbell=$CAMPBELL_ADDR" >"$TMP/chain.toml"

# load ADDR: the IAMAT load, as JSON.
load() {
    timeout $((DURATION + 60)) "$LOAD" iamat --addr "$1" --conns 50 --duration "$DURATION" \
        --json
}

# instructions TAG: the instructions counted in TAG's callgrind dump since its zeroing.
instructions() {
    # The dump after zeroing is the first numbered part.
    sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$TMP/$1.callgrind.1" | head -n 1
}

# report NAME COUNT INSTRUCTIONS: prints a row and sets PER_REQUEST.
report() {
    if [[ -z $2 || $2 == 0 || -z $3 ]]; then
        echo "$1: no figure (count '$2', instructions '$3')" >&2
        exit 1
    fi
    PER_REQUEST=$(($3 / $2))
    printf '  %-32s %9s %14s %10s\n' "$1" "$2" "$3" "$PER_REQUEST"
}

# one_server NAME TAG COMMAND...: COMMAND (a server on ADDR) under callgrind, loaded.
one_server() {
    local name=$1 tag=$2
    shift 2
    start "$tag" valgrind --tool=callgrind --callgrind-out-file="$TMP/$tag.callgrind" "$@"
    local pid=$LAST_PID json
    callgrind_control --zero "$pid" >/dev/null 2>&1
    json=$(load "$ADDR")
    callgrind_control --dump "$pid" >/dev/null 2>&1
    stop "$pid"
    report "$name" "$(field count <<<"$json")" "$(instructions "$tag")"
}

# chain NAME TAG BINARY TRACED: a chain Bailey - Bona - Campbell loaded at Bona, with
# TRACED (Bona or Campbell) under callgrind; counts per IAMAT at Bona, or per record sent to
# Campbell (the AT lines in its log).
chain() {
    local name=$1 tag=$2 bin=$3 traced=$4
    rm -rf "$TMP/logs"
    local -A pid=()
    local server
    for server in Bailey Bona Campbell; do
        if [[ $server == "$traced" ]]; then
            start "$tag" valgrind --tool=callgrind --callgrind-out-file="$TMP/$tag.callgrind" \
                "$bin" run "$server" -c "$TMP/chain.toml"
        else
            start "$tag-$server" "$bin" run "$server" -c "$TMP/chain.toml"
        fi
        pid[$server]=$LAST_PID
    done
    # The links are up once a record sent to one end is known at the other.
    "$LOAD" flood --send "$BAILEY_ADDR" --watch "$CAMPBELL_ADDR" --count 1 --timeout 60 \
        --json >/dev/null
    callgrind_control --zero "${pid[$traced]}" >/dev/null 2>&1
    local log=$TMP/logs/Campbell.log before json
    before=$(grep -c " < AT " "$log" || true)
    json=$(load "$BONA_ADDR")
    # Campbell may still be taking what Bona sent: wait until its log stops growing (for
    # two minutes at most).
    local size=-1 waited=0
    while [[ $size != $(stat -c %s "$log") ]] && ((waited++ < 120)); do
        size=$(stat -c %s "$log")
        sleep 1
    done
    callgrind_control --dump "${pid[$traced]}" >/dev/null 2>&1
    stop "${pid[@]}"
    local count
    if [[ $traced == Bona ]]; then
        count=$(field count <<<"$json")
    else
        count=$(($(grep -c " < AT " "$log") - before))
    fi
    report "$name" "$count" "$(instructions "$tag")"
}

echo "user-space instructions under callgrind, ${DURATION}s of herd-bench iamat --conns 50"
echo "per IAMAT at one server (the echo reference: per line):"
printf '  %-32s %9s %14s %10s\n' server requests instructions per-request
one_server echo echo "$LOAD" echo-server --addr "$ADDR"
ECHO=$PER_REQUEST
for i in "${!BINS[@]}"; do
    rm -rf "$TMP/logs"
    one_server "${BINS[$i]}" "one$i" "${BINS[$i]}" run Clark -c "$TMP/one.toml"
    echo "    = $(awk -v a="$PER_REQUEST" -v b="$ECHO" 'BEGIN { printf "%.2f", a / b }') x the echo's"
done
echo "per IAMAT at the middle of a chain (Bona, whose links flood to Bailey and Campbell):"
printf '  %-32s %9s %14s %10s\n' server requests instructions per-request
for i in "${!BINS[@]}"; do
    chain "${BINS[$i]}" "middle$i" "${BINS[$i]}" Bona
done
echo "per record at the end of a chain (Campbell, loaded at Bona):"
printf '  %-32s %9s %14s %10s\n' server records instructions per-record
for i in "${!BINS[@]}"; do
    chain "${BINS[$i]}" "end$i" "${BINS[$i]}" Campbell
done
