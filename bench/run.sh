#!/usr/bin/env bash
# Reproduces the table in bench/README.md.
#
#   bench/run.sh [BUILD_DIR]          default: build-bench next to this repo's root
#
# Environment: DUR (seconds per run, default 5), REPS (runs per cell, the
# median is reported, default 3; the 10,000-connection cells always run
# once), SERVERS (default "wshub rawecho node lws"; missing ones are
# skipped), OUT (JSON lines file, default /tmp/wshub-bench.jsonl).
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
        taskset -c 0 "$build/src/server/wshub" --listen 127.0.0.1:0 --workers 1 --echo \
            --port-file "$tmp/port" 2>"$tmp/err" &
        ;;
    rawecho)
        taskset -c 0 "$build/bench/rawecho" --port 0 --mode "$mode" --size "$3" 2>"$tmp/err" &
        ;;
    node)
        taskset -c 0 node "$here/node/server.js" 0 2>"$tmp/err" &
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
    rawecho) [ -x "$build/bench/rawecho" ] ;;
    node) command -v node >/dev/null && [ -d "$here/node/node_modules/ws" ] ;;
    lws) [ -x "$build/bench/lws_echo" ] ;;
    esac
}

# one SERVER LABEL BENCH-ARGS...: one run against a fresh server.
one() {
    local server=$1 label=$2 raw="" mode=echo size=32
    shift 2
    case " $* " in *" fanout "*) mode=fanout ;; esac
    if [ "$server" = rawecho ]; then
        raw=--raw
        size=$(echo "$*" | sed -n 's/.*-s \([0-9]*\).*/\1/p')
        size=${size:-32}
    fi
    start_server "$server" "$mode" "$size" || return
    sleep 0.3
    timeout $((DUR + 150)) taskset -c 1 "$bench" "$@" $raw --port "$port" -d "$DUR" \
        --server-pid "$spid" --json |
        sed "s/^{/{\"server\":\"$server\",\"cell\":\"$label\",/" | tee -a "$OUT"
    stop_server
}

# cell LABEL REPS BENCH-ARGS...: the servers take turns within each
# repetition, so a burst of load from elsewhere hits them all alike.
cell() {
    local label=$1 reps=$2 r s
    shift 2
    for r in $(seq "$reps"); do
        for s in $servers; do
            one "$s" "$label" "$@"
        done
    done
}

servers=""
for s in $SERVERS; do
    if available "$s"; then servers="$servers $s"; else echo "skip $s (not built/installed)" >&2; fi
done

cell "echo 100x1 32B" "$REPS" echo -c 100 -p 1 -s 32
cell "echo 100x16 32B" "$REPS" echo -c 100 -p 16 -s 32
cell "echo 100x1 16KiB" "$REPS" echo -c 100 -p 1 -s 16384
cell "echo 100x16 16KiB" "$REPS" echo -c 100 -p 16 -s 16384
cell "fanout 64B x1000" "$REPS" fanout -c 1000 -s 64
cell "fanout 64B x10000" 1 fanout -c 10000 -s 64 --sources 4
cell "connect -c 50" "$REPS" connect -c 50 -s 32
cell "idle 10000" 1 idle -c 10000 --sources 4 -s 32

python3 "$here/table.py" "$OUT"
