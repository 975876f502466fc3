# Sourced by the scripts of bench/: the release build, a temporary directory ($TMP, named
# after $SCRIPT), servers started in the background and waited for, and every one of them
# stopped, and the directory removed, when the script exits (also on Ctrl-C); and what the
# scripts share to read their runs (`field`, `cpu_ticks`, `median`).
#
# START_WAIT_S: how long a server may take to say it listens (10 s; more under valgrind).

TMP=$(mktemp -d "${TMPDIR:-/tmp}/herd-${SCRIPT:-bench}.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME COMMAND...: runs COMMAND in the background (output in $TMP/NAME.out and .err)
# and waits for its "listening on" line; its pid is then in LAST_PID (the command execs,
# so it is the server's own pid).
start() {
    local name=$1
    shift
    "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    local _
    for _ in $(seq $((${START_WAIT_S:-10} * 10))); do
        if grep -q "listening on" "$TMP/$name.out" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$LAST_PID" 2>/dev/null; then
            echo "$name did not start:" >&2
            cat "$TMP/$name.err" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "$name did not start within ${START_WAIT_S:-10} s" >&2
    exit 1
}

# herd_config LOG_DIR LINKS NAME=ADDR...: a herd.toml on standard output, its servers at
# these addresses, linked as LINKS says (a TOML array of name pairs; empty for none), with a
# places URL that answers nothing (these runs need no WHATSAT), and store files beside the
# logs. STORE=0 leaves the [store] section out, for a build that has none (run a newer one
# with HERD_STORE__DIR= set, for its store to be off too).
herd_config() {
    local logs=$1 links=$2 node
    shift 2
    if [[ -n $links ]]; then
        printf 'links = %s\n\n' "$links"
    fi
    printf '[places]\nurl = "http://127.0.0.1:9/nearbysearch/json"\n\n[log]\ndir = "%s"\n' "$logs"
    if [[ ${STORE:-1} != 0 ]]; then
        # Beside the logs, and one directory per herd: LOG_DIR .../logs-old gets .../data-old.
        printf '\n[store]\ndir = "%s"\n' "$(dirname "$logs")/data${logs##*/logs}"
    fi
    for node in "$@"; do
        printf '\n[[nodes]]\nname = "%s"\naddr = "%s"\n' "${node%%=*}" "${node#*=}"
    done
}

# compare_builds ROUNDS PORT_BASE ARGS...: the set-up of a script that compares two builds.
# Its arguments, OLD_BINARY NEW_BINARY [chain|one], go into OLD, NEW and SHAPE (chain unless
# given), or it says how to call the script and exits 2; ROUNDS, DURATION (5), CONNS (50)
# and PORT_BASE come from the environment, with these defaults; LOAD is the load tool,
# built (see `build_release`), and the CPUs are pinned (see `pin_cpus`).
compare_builds() {
    local rounds=$1 port_base=$2
    shift 2
    if [[ $# -lt 2 || $# -gt 3 || ! ${3:-chain} =~ ^(chain|one)$ ]]; then
        echo "usage: bash bench/$SCRIPT.sh OLD_BINARY NEW_BINARY [chain|one]" >&2
        exit 2
    fi
    OLD=$1
    NEW=$2
    SHAPE=${3:-chain}
    ROUNDS=${ROUNDS:-$rounds}
    DURATION=${DURATION:-5}
    CONNS=${CONNS:-50}
    PORT_BASE=${PORT_BASE:-$port_base}
    LOAD=target/release/herd-bench
    build_release
    pin_cpus
}

# herd_up NAME BINARY BASE: starts a herd of BINARY as SHAPE says, on the server CPU (see
# `pin_cpus`), its logs in $TMP/logs-NAME: `chain`, Bailey - Bona - Campbell on ports BASE,
# BASE+1 and BASE+2, loaded at its middle; `one`, Clark alone on BASE. Its loaded address
# is then in LOADED, and its servers' pids are the last of PIDS. Waits for a chain's links
# with the load tool (LOAD).
herd_up() {
    local name=$1 bin=$2 base=$3 server
    if [[ $SHAPE == one ]]; then
        herd_config "$TMP/logs-$name" "" "Clark=127.0.0.1:$base" >"$TMP/$name.toml"
        start "$name-clark" env -u GOOGLE_PLACES_API_KEY "${SERVER_CPU[@]}" "$bin" run Clark \
            -c "$TMP/$name.toml"
        LOADED=127.0.0.1:$base
        return
    fi
    herd_config "$TMP/logs-$name" '[["Bailey", "Bona"], ["Bona", "Campbell"]]' \
        "Bailey=127.0.0.1:$base" "Bona=127.0.0.1:$((base + 1))" \
        "Campbell=127.0.0.1:$((base + 2))" >"$TMP/$name.toml"
    for server in Bailey Bona Campbell; do
        start "$name-$server" env -u GOOGLE_PLACES_API_KEY "${SERVER_CPU[@]}" "$bin" run \
            "$server" -c "$TMP/$name.toml"
    done
    # The links are up once a record sent to one end is known at the other.
    "$LOAD" flood --send "127.0.0.1:$base" --watch "127.0.0.1:$((base + 2))" --count 1 \
        --timeout 15 --json >/dev/null
    LOADED=127.0.0.1:$((base + 1))
}

# build_release: builds the release binaries, the server (target/release/herd) and the
# load tool (target/release/herd-bench), unless SKIP_BUILD=1 asks to use them as they are.
build_release() {
    if [[ ${SKIP_BUILD:-0} != 1 ]]; then
        cargo build --release --quiet -p herd -p herd-bench
    fi
}

# pin_cpus: servers on CPU 0 and load on CPU 1 (`taskset`), so they do not fight over one
# core: sets SERVER_CPU and LOAD_CPU, the commands to prefix them with.
pin_cpus() {
    if command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]]; then
        SERVER_CPU=(taskset -c 0)
        LOAD_CPU=(taskset -c 1)
    else
        echo "warning: no taskset or fewer than 2 CPUs: servers and load share the CPUs" >&2
        SERVER_CPU=()
        LOAD_CPU=()
    fi
}

# stop PID...: stops servers started above, and forgets them (so that the cleanup on exit
# signals no process that has since taken one of their numbers).
stop() {
    kill "$@" 2>/dev/null || true
    wait "$@" 2>/dev/null || true
    local kept=() pid stopped
    for pid in "${PIDS[@]}"; do
        for stopped in "$@"; do
            [[ $pid == "$stopped" ]] && continue 2
        done
        kept+=("$pid")
    done
    PIDS=("${kept[@]}")
}

# field KEY: the number after "KEY": in the JSON on standard input (one line: the last one).
field() {
    sed -n "s/.*\"$1\":\([-0-9.e+]*\).*/\1/p" | head -n 1
}

# bench ARGS...: one herd-bench command ($BENCH) on the load CPU (LOAD_CPU, from pin_cpus),
# bounded in time ($LIMIT seconds). A failed one is reported and the script goes on.
bench() {
    local status=0
    # --foreground: in the script's process group, so that Ctrl-C reaches the benchmark.
    timeout --foreground "$LIMIT" "${LOAD_CPU[@]}" "$BENCH" "$@" || status=$?
    if [[ $status != 0 ]]; then
        echo "  herd-bench $1 failed (exit $status)" >&2
    fi
    return 0
}

# cpu_ticks PIDS...: the CPU time (user and system, in clock ticks) of all the threads of
# the processes PIDS so far.
cpu_ticks() {
    local pid
    for pid in "$@"; do cat /proc/"$pid"/task/*/stat 2>/dev/null; done |
        sed 's/^.*) //' | awk '{ s += $12 + $13 } END { print s + 0 }'
}

# median NUMBERS...: their median, the mean of the two middle ones of an even count ("?"
# and other non-numbers are left out; "?" if none is left).
median() {
    printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -g |
        awk '{ v[n++] = $1 } END { if (!n) print "?"; else if (n % 2) print v[(n - 1) / 2];
            else print (v[n / 2 - 1] + v[n / 2]) / 2 }'
}
