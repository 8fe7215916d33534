#!/usr/bin/env bash
# Reproduces the table in bench/README.md.
#
#   bench/run.sh [BUILD_DIR]          default: build-bench next to this repo's root
#
# Environment: DUR (seconds per run, default 5), REPS (runs per cell, the
# median is reported, default 3; the 10,000-connection cells always run
# once), SERVERS (default "wshub rawecho node lws"; missing ones are
# skipped), OUT (JSON lines file, default /tmp/wshub-bench.jsonl),
# IDLE_CONNS (default 10000), ONLY (a cell label: run that cell alone).
# Socket.IO (HUB) needs `npm ci` in bench/node.
# Sections: BASE=1 the comparison table; TLS=1 wshub over TLS vs plain (a
# throw-away CA from gen-cert.sh); DEFLATE=1 wshub with permessage-deflate
# on the 16 KiB JSON payload vs without; HUB=1 issue 4: fan-out through
# /ws JSON channels (bench/ws-bench.json) beside /raw, Socket.IO rooms
# (node/socketio-server.js) and Node ws, 1,000 and 10,000 subscribers, and
# memory per idle authenticated, subscribed /ws connection. All default to 1.
# Each server runs alone on core 0 (--workers 1), the bench on core 1.
# Every server is started fresh for every run and stopped by its pid.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build=${1:-$root/build-bench}
DUR=${DUR:-5}
REPS=${REPS:-3}
SERVERS=${SERVERS:-"wshub rawecho node lws"}
OUT=${OUT:-/tmp/wshub-bench.jsonl}
BASE=${BASE:-1}
TLS=${TLS:-1}
DEFLATE=${DEFLATE:-1}
HUB=${HUB:-1}
IDLE_CONNS=${IDLE_CONNS:-10000}
wshub_extra=""  # extra wshub flags for the current section
bench=$build/src/tools/wshub-bench
tmp=$(mktemp -d)
: >"$OUT"
spid=""

stop_server() {
    if [ -n "$spid" ]; then
        kill "$spid" 2>/dev/null
        wait "$spid" 2>/dev/null
        spid=""
    fi
}
trap 'stop_server; rm -rf "$tmp"' EXIT

# start_server NAME MODE -> sets spid and port
start_server() {
    local name=$1 mode=$2 i
    rm -f "$tmp/port" "$tmp/err"
    case $name in
    wshub)
        # shellcheck disable=SC2086
        taskset -c 0 "$build/src/server/wshub" --listen 127.0.0.1:0 --workers 1 --echo \
            --port-file "$tmp/port" $wshub_extra 2>"$tmp/err" &
        ;;
    rawecho)
        taskset -c 0 "$build/bench/rawecho" --port 0 --mode "$mode" --size "$3" 2>"$tmp/err" &
        ;;
    rawframe)
        taskset -c 0 "$build/bench/rawecho" --port 0 --mode echo --size "$3" --lead 4 2>"$tmp/err" &
        ;;
    node)
        taskset -c 0 node "$here/node/server.js" 0 2>"$tmp/err" &
        ;;
    socketio)
        taskset -c 0 node "$here/node/socketio-server.js" 0 2>"$tmp/err" &
        ;;
    lws)
        taskset -c 0 "$build/bench/lws_echo" --port 0 2>"$tmp/err" &
        ;;
    esac
    spid=$!
    port=""
    for i in $(seq 50); do
        if [ -s "$tmp/port" ]; then
            port=$(cat "$tmp/port")
        else
            port=$(sed -n 's/.*port=\([0-9]*\).*/\1/p' "$tmp/err" | head -1)
        fi
        [ -n "$port" ] && break
        sleep 0.1
    done
    [ -n "$port" ] || { echo "cannot start $name" >&2; stop_server; return 1; }
}

available() {
    case $1 in
    wshub) [ -x "$build/src/server/wshub" ] ;;
    rawecho | rawframe) [ -x "$build/bench/rawecho" ] ;;
    node) command -v node >/dev/null && [ -d "$here/node/node_modules/ws" ] ;;
    socketio) command -v node >/dev/null && [ -d "$here/node/node_modules/socket.io" ] ;;
    lws) [ -x "$build/bench/lws_echo" ] ;;
    esac
}

# one SERVER LABEL BENCH-ARGS...: one run against a fresh server.
one() {
    local server=$1 label=$2 raw="" mode=echo size=32
    shift 2
    case " $* " in *" fanout "*) mode=fanout ;; esac
    if [ "$server" = rawecho ] || [ "$server" = rawframe ]; then
        raw=--raw
        # The server is told the bench's message size (-s, default 32).
        # rawframe gets the bytes and layout of wshub's echo of a
        # 126..65,535-byte message: 4 more bytes per message (the reply's
        # frame header), sent from 60 bytes into a cache line
        # (rawecho --lead 4), so the bench sends -s + 4.
        local a=() prev="" x
        for x in "$@"; do
            if [ "$prev" = -s ]; then
                [ "$server" = rawframe ] && x=$((x + 4))
                size=$x
            fi
            a+=("$x")
            prev=$x
        done
        set -- "${a[@]}"
    fi
    start_server "$server" "$mode" "$size" || return
    sleep 0.3
    timeout $((DUR + 150)) taskset -c 1 "$bench" "$@" $raw --port "$port" -d "$DUR" \
        --server-pid "$spid" --json |
        sed "s|^{|{\"server\":\"${server_label:-$server}\",\"cell\":\"$label\",|" | tee -a "$OUT"
    stop_server
}

# cell LABEL REPS BENCH-ARGS...: the servers take turns within each
# repetition, so a burst of load from elsewhere hits them all alike.
cell() {
    local label=$1 reps=$2 r s
    shift 2
    # ONLY="LABEL": run that cell alone (e.g. more pairs of one target cell).
    [ -n "${ONLY:-}" ] && [ "$ONLY" != "$label" ] && return
    for r in $(seq "$reps"); do
        for s in $servers; do
            one "$s" "$label" "$@"
        done
    done
}

# TARGETS=1: only the cells whose ratio to rawecho issue 2 sets a target,
# wshub and rawecho taking turns REPS times (default 15, 3 s runs), then
# the ratio of the medians per cell (ratios.py). The 16 KiB cell also runs
# rawframe (FRAME=0 skips it). On a shared machine the
# rate of a 5 s run moves by +-10 %: many short interleaved runs give a
# steadier median than three long ones.
if [ "${TARGETS:-0}" = 1 ]; then
    SERVERS="rawecho wshub"
    REPS=${REPS_T:-15}
    DUR=${DUR_T:-3}
    BASE=0 TLS=0 DEFLATE=0 HUB=0
fi

servers=""
for s in $SERVERS; do
    if available "$s"; then servers="$servers $s"; else echo "skip $s (not built/installed)" >&2; fi
done

if [ "${TARGETS:-0}" = 1 ]; then
    cell "echo 100x1 32B" "$REPS" echo -c 100 -p 1 -s 32
    cell "echo 100x16 32B" "$REPS" echo -c 100 -p 16 -s 32
    # The 16 KiB cell also runs rawframe: rawecho sending wshub's reply
    # bytes in wshub's layout, what the frame header alone costs the
    # kernel (bench/README.md, "what the frame header costs").
    servers_t=$servers
    available rawframe && [ "${FRAME:-1}" = 1 ] && servers="$servers rawframe"
    cell "echo 100x1 16KiB" "$REPS" echo -c 100 -p 1 -s 16384
    servers=$servers_t
    cell "fanout 64B x10000" "$REPS" fanout -c 10000 -s 64 --sources 4
    python3 "$here/ratios.py" "$OUT"
fi

if [ "$BASE" = 1 ]; then
    cell "echo 100x1 32B" "$REPS" echo -c 100 -p 1 -s 32
    cell "echo 100x16 32B" "$REPS" echo -c 100 -p 16 -s 32
    cell "echo 100x1 16KiB" "$REPS" echo -c 100 -p 1 -s 16384
    cell "echo 100x16 16KiB" "$REPS" echo -c 100 -p 16 -s 16384
    cell "fanout 64B x1000" "$REPS" fanout -c 1000 -s 64
    cell "fanout 64B x10000" 1 fanout -c 10000 -s 64 --sources 4
    cell "connect -c 50" "$REPS" connect -c 50 -s 32
    cell "idle 10000" 1 idle -c 10000 --sources 4 -s 32
fi

# Issue 3 rows: wshub only. Each TLS/deflate cell comes right after its
# plain twin, with the same bench arguments otherwise.
base_servers=$servers
case " $servers " in *" wshub "*) servers=" wshub" ;; *) servers="" ;; esac

if [ "$TLS" = 1 ] && [ -n "$servers" ]; then
    bash "$here/gen-cert.sh" "$tmp/cert"
    tls="--tls --cacert $tmp/cert/ca.pem"
    tls_srv="--tls-cert $tmp/cert/server.pem --tls-key $tmp/cert/server.key"
    for s in 32 16384; do
        label="${s}B"
        [ "$s" = 16384 ] && label=16KiB
        wshub_extra=""
        cell "echo 100x16 $label plain" "$REPS" echo -c 100 -p 16 -s "$s"
        wshub_extra=$tls_srv
        # shellcheck disable=SC2086
        cell "echo 100x16 $label TLS" "$REPS" echo -c 100 -p 16 -s "$s" $tls
    done
    wshub_extra=""
    cell "idle $IDLE_CONNS plain" 1 idle -c "$IDLE_CONNS" --sources 4
    wshub_extra=$tls_srv
    # shellcheck disable=SC2086
    cell "idle $IDLE_CONNS TLS" 1 idle -c "$IDLE_CONNS" --sources 4 $tls
fi

if [ "$DEFLATE" = 1 ] && [ -n "$servers" ]; then
    wshub_extra="--deflate"
    cell "echo 100x16 16KiB JSON" "$REPS" echo -c 100 -p 16 --payload json
    cell "echo 100x16 16KiB JSON deflate" "$REPS" echo -c 100 -p 16 --payload json --deflate
    cell "idle $IDLE_CONNS deflate" 1 idle -c "$IDLE_CONNS" --sources 4 --deflate
fi
wshub_extra=""
servers=$base_servers

# Issue 4 rows. Every server runs the same fanout (windowed, -s 64: the
# payload is 64 bytes; /ws and Socket.IO wrap it in their envelopes); the
# servers take turns within a repetition. wshub runs with ws-bench.json for
# /raw too, so the two rows differ only in the endpoint.
if [ "$HUB" = 1 ]; then
    hub() { # hub SERVER SERVER-LABEL CELL BENCH-ARGS...
        local s=$1
        server_label=$2
        shift 2
        if available "$s"; then one "$s" "$@"; else echo "skip $s" >&2; fi
        server_label=""
    }
    for n in 1000 10000; do
        src="" reps=$REPS
        [ "$n" = 10000 ] && src="--sources 4" reps=1
        for _ in $(seq "$reps"); do
            wshub_extra="--config $here/ws-bench.json"
            # shellcheck disable=SC2086
            hub wshub "wshub /raw" "hub fanout 64B x$n" fanout -c "$n" -s 64 $src
            # shellcheck disable=SC2086
            hub wshub "wshub /ws" "hub fanout 64B x$n" fanout -c "$n" -s 64 $src --proto ws
            wshub_extra=""
            # shellcheck disable=SC2086
            hub socketio "Socket.IO" "hub fanout 64B x$n" fanout -c "$n" -s 64 $src --proto socketio
            # shellcheck disable=SC2086
            hub node "node ws /raw" "hub fanout 64B x$n" fanout -c "$n" -s 64 $src
        done
    done
    wshub_extra="--config $here/ws-bench.json"
    hub wshub "wshub /ws" "idle $IDLE_CONNS /ws subscribed" idle -c "$IDLE_CONNS" --sources 4 --proto ws
    wshub_extra=""
fi

python3 "$here/table.py" "$OUT"
