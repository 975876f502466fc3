#!/usr/bin/env bash
# Runs bench/compare.sh several times, one after the other, and judges each target by its
# median over the runs: on a shared machine one run can land in a slow phase
# (bench/RESULTS.md), and a median of three or five says what the herd does more reliably
# than any one run. Prints each run's verdicts as it ends, then every target's figures, their
# median, and whether the median meets the target.
#
#   bash bench/repeat.sh [RUNS]        # RUNS defaults to 3; about 3-5 minutes each
#
# The environment is passed on to compare.sh (QUICK=1, DETAIL=1, ...); the release binaries
# (herd and herd-bench) are built once, by the first run. Each run's whole output is kept in
# a directory under /tmp, named at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${1:-3}
if ! [[ $RUNS =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: bash bench/repeat.sh [RUNS]  (RUNS: a number of runs, 1 or more)" >&2
    exit 2
fi
OUT=$(mktemp -d /tmp/herd-repeat.XXXXXX)

for run in $(seq "$RUNS"); do
    echo "== run $run of $RUNS"
    status=0
    bash bench/compare.sh >"$OUT/run$run.txt" 2>&1 || status=$?
    if [[ $status != 0 ]]; then
        echo "  compare.sh failed (exit $status); its output: $OUT/run$run.txt"
    fi
    sed -n '/^== against the targets/,$p' "$OUT/run$run.txt" | tail -n +2
    # The first run built the binaries the others use.
    export SKIP_BUILD=1
done

echo
echo "== the targets over $RUNS run(s): each run's figure, their median, the verdict"
# A target line of compare.sh: "  LABEL   FIGURE  (target OP LIMIT)  VERDICT".
awk '
    FNR == 1 { on = 0 }
    /^== against the targets/ { on = 1; next }
    on && /\(target (<=|>=) / {
        label = $0
        sub(/^ +/, "", label)
        sub(/ +[^ ]+ +\(target .*$/, "", label)
        if (!(label in count)) { order[++labels] = label; op[label] = $(NF - 2)
            limit[label] = $(NF - 1); sub(/\)$/, "", limit[label]) }
        figure = $(NF - 4)
        shown[label] = shown[label] " " figure
        if (figure ~ /^[-+]?[0-9]+(\.[0-9]+)?$/) value[label, ++count[label]] = figure + 0
        else if (!(label in count)) count[label] = 0
    }
    END {
        for (i = 1; i <= labels; i++) {
            l = order[i]; n = count[l]
            for (a = 1; a <= n; a++) v[a] = value[l, a]
            for (a = 2; a <= n; a++) for (b = a; b > 1 && v[b - 1] > v[b]; b--) {
                t = v[b]; v[b] = v[b - 1]; v[b - 1] = t }
            if (n == 0) { median = "?"; verdict = "no figure" }
            else {
                median = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
                met = (op[l] == "<=") ? median <= limit[l] + 0 : median >= limit[l] + 0
                verdict = met ? "met" : "MISSED"
            }
            printf "  %-54s %-28s median %-7s (target %s %s)  %s\n", l, shown[l], median,
                op[l], limit[l], verdict
        }
    }' "$OUT"/run*.txt
echo "each run's whole output: $OUT"
