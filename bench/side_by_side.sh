#!/usr/bin/env bash
# Two builds at once: each runs its own servers on the same core, loaded at the same time
# from the other core, so both meet the same machine at every moment. The ratio of their
# throughputs repeats to within ~0.5%, where runs one after the other (compare.sh) drift by
# 10-20% with the phases of a shared machine. Use it to decide whether a change to what
# the loaded server's own thread does (its system calls, its scheduling, its memory) is a
# win, where instruction counts cannot see it.
#
# What it cannot see: work in any other thread or process, such as the log threads or a
# chain's two ends. The two loaded servers always have work, and the scheduler shares
# among them what the other threads leave of the core: a build whose log thread or ends
# cost less frees time for both loaded servers alike, and the ratio does not move. Judge
# such a change with bench/alternate.sh, which runs each build alone.
#
#   bash bench/side_by_side.sh OLD_BINARY NEW_BINARY [chain|one]
#
# chain (the default): each build runs a chain of three (Bailey - Bona - Campbell) loaded at
# its middle, as compare.sh's "middle of a chain"; one: each build runs one server.
# Rounds alternate which build goes first (ports, start order), to cancel any edge that
# gives. Prints NEW / OLD per round and their mean.
#
# Environment: ROUNDS (4), DURATION (seconds of load per round, 5), CONNS (50), PORT_BASE
# (first of six ports, 17250), SKIP_BUILD=1 (use the release load tool as it is).
# Everything listens on 127.0.0.1 and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SCRIPT=side_by_side
# shellcheck source=bench/servers.sh
source bench/servers.sh
compare_builds 4 17250 "$@"

echo "side by side ($SHAPE, $ROUNDS rounds of ${DURATION}s, --conns $CONNS each, servers on CPU 0):"
echo "  OLD $OLD"
echo "  NEW $NEW"
printf '  %-6s %12s %12s %9s %9s %9s\n' round "OLD req/s" "NEW req/s" "OLD p99" "NEW p99" NEW/OLD
ratios=()
for round in $(seq "$ROUNDS"); do
    # Odd rounds: OLD on the first ports and started first; even rounds: NEW.
    if ((round % 2)); then first=("$OLD" old) second=("$NEW" new); else first=("$NEW" new) second=("$OLD" old); fi
    PIDS_BEFORE=${#PIDS[@]}
    herd_up "${first[1]}" "${first[0]}" "$PORT_BASE"
    addr_first=$LOADED
    herd_up "${second[1]}" "${second[0]}" $((PORT_BASE + 3))
    addr_second=$LOADED
    timeout $((DURATION + 30)) "${LOAD_CPU[@]}" "$LOAD" iamat --addr "$addr_first" \
        --conns "$CONNS" --duration "$DURATION" --json >"$TMP/${first[1]}.json" &
    load_first=$!
    timeout $((DURATION + 30)) "${LOAD_CPU[@]}" "$LOAD" iamat --addr "$addr_second" \
        --conns "$CONNS" --duration "$DURATION" --json >"$TMP/${second[1]}.json" &
    load_second=$!
    # Stopped with the servers, also when the script is interrupted.
    PIDS+=("$load_first" "$load_second")
    wait "$load_first" "$load_second"
    stop "${PIDS[@]:$PIDS_BEFORE}"
    rm -rf "$TMP"/logs-* "$TMP"/data-*
    old_rps=$(field throughput_rps <"$TMP/old.json")
    new_rps=$(field throughput_rps <"$TMP/new.json")
    ratio=$(awk -v n="$new_rps" -v o="$old_rps" 'BEGIN { printf "%.3f", n / o }')
    ratios+=("$ratio")
    printf '  %-6s %12.0f %12.0f %9s %9s %9s\n' "$round" "$old_rps" "$new_rps" \
        "$(field p99 <"$TMP/old.json")" "$(field p99 <"$TMP/new.json")" "$ratio"
done
printf '%s\n' "${ratios[@]}" |
    awk '{ s += $1; n++; if (n == 1 || $1 < lo) lo = $1; if (n == 1 || $1 > hi) hi = $1 }
         END { printf "  NEW / OLD throughput: mean %.3f (rounds %.3f-%.3f)\n", s / n, lo, hi }'
