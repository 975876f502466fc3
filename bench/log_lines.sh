#!/usr/bin/env bash
# What each `[log] lines` level costs: one server (`herd run Clark`, pinned to CPU 0) under the
# IAMAT load (`herd-bench iamat --conns 50 --duration 5`, pinned to CPU 1), at "all",
# "errors" and "none" in turn, for ROUNDS rounds; each server has a fresh log and store
# directory. Prints each run (throughput, requests, the log file's size, and that size per
# request), then each level's medians.
#
#   bash bench/log_lines.sh [ROUNDS]     # ROUNDS defaults to 3; about 20 s a run
#
# Environment: DURATION (seconds of load per run, 5), CONNS (50), PIPELINE (IAMATs written at
# once on each connection, 1), PORT (the server's port, 17200), SKIP_BUILD=1 (use the
# release binaries as they are).
# Everything listens on 127.0.0.1 only, every run is bounded in time, and every server is
# stopped by its pid (also on Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
if ! [[ $ROUNDS =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: bash bench/log_lines.sh [ROUNDS]  (ROUNDS: a number, 1 or more)" >&2
    exit 2
fi
DURATION=${DURATION:-5}
CONNS=${CONNS:-50}
PIPELINE=${PIPELINE:-1}
ADDR=127.0.0.1:${PORT:-17200}
LEVELS=(all errors none)

BIN=target/release/herd
BENCH=target/release/herd-bench
SCRIPT=loglines
# shellcheck source=bench/servers.sh
source bench/servers.sh
build_release
pin_cpus

declare -A RPS BYTES
printf '%-7s %5s %12s %10s %14s %10s\n' level round "requests/s" requests "log bytes" "bytes/req"
for round in $(seq "$ROUNDS"); do
    for level in "${LEVELS[@]}"; do
        dir=$TMP/$level-$round
        mkdir -p "$dir"
        herd_config "$dir/logs" "" "Clark=$ADDR" |
            sed "/^\[log\]/a lines = \"$level\"" >"$dir/herd.toml"
        start "$level-$round" "${SERVER_CPU[@]}" "$BIN" run Clark -c "$dir/herd.toml"
        pid=$LAST_PID
        report=$(timeout --foreground $((DURATION * 4 + 60)) "${LOAD_CPU[@]}" "$BENCH" iamat \
            --addr "$ADDR" --conns "$CONNS" --pipeline "$PIPELINE" --duration "$DURATION" --json | tail -n 1)
        stop "$pid"
        rps=$(field throughput_rps <<<"$report")
        count=$(field count <<<"$report")
        bytes=$(stat -c %s "$dir/logs/Clark.log")
        per=$(awk -v b="$bytes" -v n="$count" 'BEGIN { printf "%.2f", (n > 0 ? b / n : 0) }')
        printf '%-7s %5s %12.0f %10s %14s %10s\n' "$level" "$round" "$rps" "$count" "$bytes" "$per"
        RPS[$level]+="$rps "
        BYTES[$level]+="$per "
        rm -rf "$dir"
    done
done

echo
echo "medians over $ROUNDS round(s):"
printf '%-7s %12s %10s %12s\n' level "requests/s" "bytes/req" "log MB/s"
for level in "${LEVELS[@]}"; do
    # shellcheck disable=SC2086 # the lists are numbers, split on purpose
    rps=$(median ${RPS[$level]})
    # shellcheck disable=SC2086
    per=$(median ${BYTES[$level]})
    mbs=$(awk -v r="$rps" -v b="$per" 'BEGIN { printf "%.1f", r * b / 1e6 }')
    printf '%-7s %12.0f %10s %12s\n' "$level" "$rps" "$per" "$mbs"
done
