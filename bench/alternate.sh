#!/usr/bin/env bash
# Two builds one after the other, alternating: each round runs one build's herd alone on
# the server core under IAMAT load, then the other's (which goes first alternates), and
# reads how much CPU all of the herd's threads took per request: the serving threads, the
# log threads, and in a chain the two ends; and the load's latency. It sees every cost a
# build adds or saves, where side_by_side.sh (both at once) sees only the loaded server's
# own thread. But the machine drifts between runs (10-20% on a shared host), so judge by
# the medians of several rounds, and by CPU per request before throughput: it drifts less.
#
#   bash bench/alternate.sh OLD_BINARY NEW_BINARY [chain|one]
#
# chain (the default): a chain of three (Bailey - Bona - Campbell) loaded at its middle, as
# compare.sh's "middle of a chain"; one: one server. STORE=0 with HERD_STORE__DIR= set runs
# without store files, as compare.sh's chain does.
#
# Environment: ROUNDS (6), DURATION (seconds of load per run, 5), CONNS (50), PORT_BASE
# (first of six ports, 17270), SKIP_BUILD=1 (use the release load tool as it is).
# Everything listens on 127.0.0.1 and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SCRIPT=alternate
# shellcheck source=bench/servers.sh
source bench/servers.sh
compare_builds 6 17270 "$@"

declare -A RPS P99 MAX CPU

# run NAME BINARY BASE: NAME's herd alone under load; prints the run, and adds its
# throughput, p99 and slowest latency, and CPU per request to RPS, P99, MAX and CPU[NAME].
run() {
    local name=$1 bin=$2 base=$3 first=${#PIDS[@]} before after json rps p99 max count cpu
    herd_up "$name" "$bin" "$base"
    local pids=("${PIDS[@]:$first}")
    before=$(cpu_ticks "${pids[@]}")
    json=$(timeout $((DURATION + 30)) "${LOAD_CPU[@]}" "$LOAD" iamat --addr "$LOADED" \
        --conns "$CONNS" --duration "$DURATION" --json)
    after=$(cpu_ticks "${pids[@]}")
    stop "${pids[@]}"
    rm -rf "$TMP/logs-$name" "$TMP/data-$name"
    rps=$(field throughput_rps <<<"$json")
    p99=$(field p99 <<<"$json")
    max=$(field max <<<"$json")
    count=$(field count <<<"$json")
    cpu=$(awk -v t=$((after - before)) -v n="$count" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { if (n > 0) printf "%.2f", t * 1e6 / hz / n; else print "?" }')
    RPS[$name]+=" $rps"
    P99[$name]+=" $p99"
    MAX[$name]+=" $max"
    CPU[$name]+=" $cpu"
    printf '  %-6s %-4s %10.0f %8s %8s %11s\n' "$round" "$name" "$rps" "$p99" "$max" "$cpu"
}

echo "alternately, each build alone ($SHAPE, $ROUNDS rounds of ${DURATION}s, --conns $CONNS, servers on CPU 0):"
echo "  OLD $OLD"
echo "  NEW $NEW"
printf '  %-6s %-4s %10s %8s %8s %11s\n' round herd "req/s" "p99 us" "max us" "cpu-us/req"
for round in $(seq "$ROUNDS"); do
    if ((round % 2)); then
        run old "$OLD" "$PORT_BASE"
        run new "$NEW" $((PORT_BASE + 3))
    else
        run new "$NEW" $((PORT_BASE + 3))
        run old "$OLD" "$PORT_BASE"
    fi
done
# medians NAME: the medians of NAME's throughput, p99, slowest latency and CPU per request.
medians() {
    # shellcheck disable=SC2086 # the lists are space-separated numbers
    echo "$(median ${RPS[$1]}) $(median ${P99[$1]}) $(median ${MAX[$1]}) $(median ${CPU[$1]})"
}
read -r old_rps old_p99 old_max old_cpu <<<"$(medians old)"
read -r new_rps new_p99 new_max new_cpu <<<"$(medians new)"
printf '  medians: OLD %.0f req/s, p99 %s us, max %s us, %s us/req\n' "$old_rps" "$old_p99" \
    "$old_max" "$old_cpu"
printf '           NEW %.0f req/s, p99 %s us, max %s us, %s us/req\n' "$new_rps" "$new_p99" \
    "$new_max" "$new_cpu"
awk -v nr="$new_rps" -v orr="$old_rps" -v np="$new_p99" -v op="$old_p99" -v nc="$new_cpu" \
    -v oc="$old_cpu" 'BEGIN { printf "  NEW / OLD: throughput %.3f, p99 %.3f, CPU per request %.3f\n",
        nr / orr, np / op, nc / oc }'
