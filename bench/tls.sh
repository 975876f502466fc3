#!/usr/bin/env bash
# What TLS costs the herd's links: two chains of three servers (Bailey - Bona - Campbell),
# identical but for their links, plain TCP in one and mutual TLS 1.3 in the other, measured
# on the same machine in alternation, so that drifts of a shared machine hit both alike.
# Every record a server stores crosses its links, so TLS shows where links work hardest:
# at the middle of a chain, which floods each record both ways, and in the time a record
# takes to cross two hops.
#
#   bash bench/tls.sh                          # about a minute and a half
#   ROUNDS=2 DURATION=2 bash bench/tls.sh      # about half a minute
#
# Each round starts each chain in turn (which goes first alternates from round to round),
# waits until a record sent to Bailey is known at Campbell (the links are up), and
# measures:
# - two-hop propagation at 1,000 IAMATs a second: `herd-bench flood --rate 1000`, sent to
#   Bailey and watched as Campbell's neighbor Watcher, whose link the tool takes
#   (`--listen`, as compare.sh): the p99 of each record's time from its IAMAT's write to
#   its arrival on Watcher's link;
# - the chain middle's IAMAT throughput: `herd-bench iamat --addr <Bona> --conns 50`, and
#   the CPU time of all three servers per request;
# then stops the chain and removes its store and log files. Propagation goes first, while
# the stores are small (Watcher's link starts with a snapshot of Campbell's store).
# It prints each round, then the medians over the rounds of TLS/plain throughput and of
# each chain's propagation p99, and judges them against the targets: TLS costs at most 10%
# of the chain middle's throughput (median TLS/plain >= 0.90), and the TLS chain's two-hop
# p99 at 1,000/s is under 1 ms.
#
# Both chains give every server a peer_addr (TLS needs one; the plain chain has the same
# shape). The TLS chain's certificates are made once, with `herd certs`. The load tool
# speaks plain TCP only, so Watcher's link reaches it through a small forwarder (python3)
# that holds Watcher's certificate and takes Campbell's TLS in the TLS chain; the plain
# chain's Watcher link goes through the same forwarder, without TLS. The forwarder's hop
# is in both chains' propagation times.
#
# Servers are pinned to CPU 0 and the load (the tool and the forwarder) to CPU 1 (taskset).
# Everything listens on 127.0.0.1 only, every run is bounded in time, and every process this
# script starts is stopped when it exits (also on Ctrl-C).
#
# Environment: ROUNDS (4), DURATION (seconds of IAMAT load per chain and round, 5),
# PORT_BASE (first of the nine ports used, 17300), SKIP_BUILD=1 (use the release binaries
# as they are).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-5}
PORT_BASE=${PORT_BASE:-17300}
CONNS=50
RATE=1000
RATE_COUNT=2000
LIMIT=$((DURATION * 4 + 120)) # seconds any one benchmark command may take

# Clients' addresses, then the links' (peer_addr), then where the tool takes Watcher's link.
BAILEY_ADDR=127.0.0.1:$PORT_BASE
BONA_ADDR=127.0.0.1:$((PORT_BASE + 1))
CAMPBELL_ADDR=127.0.0.1:$((PORT_BASE + 2))
WATCHER_ADDR=127.0.0.1:$((PORT_BASE + 3))
BAILEY_PEER=127.0.0.1:$((PORT_BASE + 4))
BONA_PEER=127.0.0.1:$((PORT_BASE + 5))
CAMPBELL_PEER=127.0.0.1:$((PORT_BASE + 6))
WATCHER_PEER=127.0.0.1:$((PORT_BASE + 7))
TOOL_ADDR=127.0.0.1:$((PORT_BASE + 8))

BIN=target/release/herd
BENCH=target/release/herd-bench
SCRIPT=tls
# shellcheck source=bench/servers.sh
source bench/servers.sh
build_release
pin_cpus
if ! command -v python3 >/dev/null; then
    echo "tls.sh needs python3 (for the forwarder that plays Watcher's end of its link)" >&2
    exit 1
fi

# chain_config MODE: the herd.toml of the plain or the tls chain, on standard output.
chain_config() {
    local mode=$1 name addr peer
    cat <<EOF
links = [["Bailey", "Bona"], ["Bona", "Campbell"], ["Campbell", "Watcher"]]

[places]
url = "http://127.0.0.1:9/nearbysearch/json"

[log]
dir = "$TMP/logs-$mode"

[store]
dir = "$TMP/data-$mode"
EOF
    if [[ $mode == tls ]]; then
        printf '\n[tls]\ndir = "%s"\n' "$TMP/certs"
    fi
    for node in "Bailey $BAILEY_ADDR $BAILEY_PEER" "Bona $BONA_ADDR $BONA_PEER" \
        "Campbell $CAMPBELL_ADDR $CAMPBELL_PEER" "Watcher $WATCHER_ADDR $WATCHER_PEER"; do
        read -r name addr peer <<<"$node"
        printf '\n[[nodes]]\nname = "%s"\naddr = "%s"\npeer_addr = "%s"\n' "$name" "$addr" "$peer"
    done
}

# The forwarder: accepts Campbell's link on Watcher's peer_addr (with TLS and Watcher's
# certificate, taking only a certificate of the herd's CA, when given a certificate
# directory), connects to the tool and passes on what comes (the tool never writes on a
# link). One link at a time; it retries the tool for 15 s, as the tool may start after it.
cat >"$TMP/forward.py" <<'EOF'
import socket, ssl, sys, time

listen, target = sys.argv[1], sys.argv[2]
certs = sys.argv[3] if len(sys.argv) > 3 else None
addr = lambda a: (a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1]))
server = socket.create_server(addr(listen))
context = None
if certs:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(f"{certs}/Watcher.pem", f"{certs}/Watcher.key")
    context.load_verify_locations(f"{certs}/ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED
print(f"forwarder listening on {listen}", flush=True)
while True:
    link, _ = server.accept()
    tool = None
    try:
        link.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context:
            link = context.wrap_socket(link, server_side=True)
        give_up = time.monotonic() + 15
        while tool is None:
            try:
                tool = socket.create_connection(addr(target))
            except OSError:
                if time.monotonic() > give_up:
                    raise
                time.sleep(0.01)
        tool.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := link.recv(65536):
            tool.sendall(data)
    except OSError as e:
        print(f"forwarder: {e}", file=sys.stderr, flush=True)
    finally:
        link.close()
        if tool:
            tool.close()
EOF

# link_lines MODE: what the chain's logs and standard error say about its links.
link_lines() {
    local mode=$1
    grep -hiE 'link|tls|certificate|refused|hello' "$TMP/logs-$mode"/*.log 2>/dev/null |
        grep -v ' [<>] ' | tail -n 30 || true
    cat "$TMP/$mode-"*.err 2>/dev/null | tail -n 20 || true
}

# up MODE: starts the chain's three servers and waits until its links are up; their pids
# are then in CHAIN_PIDS.
up() {
    local mode=$1 name
    CHAIN_PIDS=()
    for name in Bailey Bona Campbell; do
        start "$mode-$name" env -u GOOGLE_PLACES_API_KEY "${SERVER_CPU[@]}" "$BIN" run "$name" \
            -c "$TMP/$mode.toml"
        CHAIN_PIDS+=("$LAST_PID")
    done
    # The links are up once a record sent to one end is known at the other.
    if ! timeout --foreground 30 "${LOAD_CPU[@]}" "$BENCH" flood --send "$BAILEY_ADDR" \
        --watch "$CAMPBELL_ADDR" --count 1 --timeout 15 --json >/dev/null; then
        echo "the $mode chain did not link: a record sent to Bailey never reached Campbell" >&2
        link_lines "$mode" >&2
        exit 1
    fi
    # Each server says at start whether its links are TLS: the chain must be what it says.
    local tls_servers
    tls_servers=$(cat "$TMP/logs-$mode"/*.log | grep -c 'accepting herd links on .* over TLS' || true)
    if [[ $mode == tls && $tls_servers != 3 || $mode == plain && $tls_servers != 0 ]]; then
        echo "the $mode chain has $tls_servers of 3 servers with TLS links" >&2
        exit 1
    fi
}

# down MODE: stops the chain and removes its store and log files, and its servers' output
# (`start` waits for a "listening on" there: the next round's must not find this one's).
down() {
    stop "${CHAIN_PIDS[@]}"
    rm -rf "$TMP/data-$1" "$TMP/logs-$1" "$TMP/$1-"*.out "$TMP/$1-"*.err
}

# propagation MODE: sets P99 to the p99 (us) of two-hop propagation at RATE, watched as
# Watcher ("?" if the run failed).
propagation() {
    local mode=$1 json forwarder
    local -a certs=()
    if [[ $mode == tls ]]; then
        certs=("$TMP/certs")
    fi
    start "$mode-forwarder" "${LOAD_CPU[@]}" python3 "$TMP/forward.py" "$WATCHER_PEER" \
        "$TOOL_ADDR" "${certs[@]}"
    forwarder=$LAST_PID
    json=$(bench flood --send "$BAILEY_ADDR" --watch "$CAMPBELL_ADDR" --listen "$TOOL_ADDR" \
        --count "$RATE_COUNT" --rate "$RATE" --timeout 15 --json)
    stop "$forwarder"
    rm -f "$TMP/$mode-forwarder.out"
    P99="?"
    if [[ -z $json ]]; then
        link_lines "$mode" >&2
        cat "$TMP/$mode-forwarder.err" >&2
        return
    fi
    # The JSON's first p99 is the acknowledgements'; propagation's follows.
    P99=$(sed -n 's/.*"propagation_us":{[^}]*"p99":\([0-9]*\).*/\1/p' <<<"$json")
    if [[ $(field lost <<<"$json") != 0 ]]; then
        echo "  $mode: $(field lost <<<"$json") of $RATE_COUNT records never reached Watcher" >&2
    fi
}

# throughput MODE: IAMAT load on the chain's middle; sets RPS (IAMATs a second) and CPU
# (the three servers' CPU time per IAMAT, us), "?" if the run failed.
throughput() {
    local json before after
    before=$(cpu_ticks "${CHAIN_PIDS[@]}")
    json=$(bench iamat --addr "$BONA_ADDR" --conns "$CONNS" --duration "$DURATION" --json)
    after=$(cpu_ticks "${CHAIN_PIDS[@]}")
    RPS="?" CPU="?"
    if [[ -z $json ]]; then
        return
    fi
    if [[ $(field errors <<<"$json") != 0 ]]; then
        echo "  $1: $(field errors <<<"$json") IAMAT errors" >&2
    fi
    RPS=$(awk -v r="$(field throughput_rps <<<"$json")" 'BEGIN { printf "%.0f", r }')
    CPU=$(awk -v n="$(field count <<<"$json")" -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" \
        'BEGIN { printf "%.2f", (n > 0) ? t / hz / n * 1e6 : 0 }')
}

# verdict WHAT VALUE OP LIMIT: whether VALUE meets the target "OP LIMIT" (>= or <).
verdict() {
    local met
    met=$(awk -v v="$2" -v op="$3" -v l="$4" 'BEGIN {
        if (v !~ /^[0-9]+(\.[0-9]+)?$/) print "no figure"
        else if ((op == "<") ? v + 0 < l + 0 : v + 0 >= l + 0) print "met"
        else print "MISSED" }')
    printf '  %-50s %8s  (target %s %s)  %s\n' "$1" "$2" "$3" "$4" "$met"
}

chain_config plain >"$TMP/plain.toml"
chain_config tls >"$TMP/tls.toml"
"$BIN" certs -c "$TMP/tls.toml" --out "$TMP/certs" >/dev/null
"$BIN" check -c "$TMP/tls.toml" >/dev/null

echo "TLS links vs plain: chains of three, $ROUNDS rounds, IAMAT --conns $CONNS for ${DURATION}s at the" \
    "middle, propagation at ${RATE}/s ($RATE_COUNT samples); $(nproc) CPUs, servers on CPU 0," \
    "load on CPU 1; $(git describe --always --dirty 2>/dev/null || echo '?')"
printf '  %-5s %-6s %10s %10s %9s %11s %11s %10s %10s\n' round first "plain r/s" "TLS r/s" \
    TLS/plain "plain cpu" "TLS cpu" "plain p99" "TLS p99"
ratios=() p99s_plain=() p99s_tls=() cpus_plain=() cpus_tls=()
for round in $(seq "$ROUNDS"); do
    if ((round % 2)); then order=(plain tls); else order=(tls plain); fi
    for mode in "${order[@]}"; do
        up "$mode"
        propagation "$mode"
        throughput "$mode"
        down "$mode"
        printf -v "rps_$mode" %s "$RPS"
        printf -v "cpu_$mode" %s "$CPU"
        printf -v "p99_$mode" %s "$P99"
    done
    # shellcheck disable=SC2154 # rps_plain and the others are set just above
    ratio=$(awk -v t="$rps_tls" -v p="$rps_plain" \
        'BEGIN { if (t ~ /^[0-9]/ && p > 0) printf "%.3f", t / p; else print "?" }')
    ratios+=("$ratio") p99s_plain+=("$p99_plain") p99s_tls+=("$p99_tls")
    cpus_plain+=("$cpu_plain") cpus_tls+=("$cpu_tls")
    printf '  %-5s %-6s %10s %10s %9s %11s %11s %10s %10s\n' "$round" "${order[0]}" \
        "$rps_plain" "$rps_tls" "$ratio" "$cpu_plain" "$cpu_tls" "$p99_plain" "$p99_tls"
done
echo "  (r/s: IAMATs a second at Bona; cpu: all three servers' CPU time per IAMAT, us;" \
    "p99: two-hop propagation at ${RATE}/s, us)"

MEDIAN_RATIO=$(median "${ratios[@]}")
echo
echo "== medians over $ROUNDS rounds"
echo "  TLS/plain throughput at the chain's middle: $MEDIAN_RATIO"
echo "  servers' CPU per IAMAT: plain $(median "${cpus_plain[@]}") us, TLS $(median "${cpus_tls[@]}") us"
echo "  propagation p99 at ${RATE}/s over two hops: plain $(median "${p99s_plain[@]}") us," \
    "TLS $(median "${p99s_tls[@]}") us"
echo
echo "== against the targets"
verdict "TLS/plain throughput at the chain's middle" "$MEDIAN_RATIO" ">=" 0.90
verdict "TLS propagation p99 at ${RATE}/s, two hops (us)" "$(median "${p99s_tls[@]}")" "<" 1000
