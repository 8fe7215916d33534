#!/usr/bin/env bash
# Instructions the server executes per echoed message, counted by
# callgrind: exact and repeatable (the same binary and load give the same
# count whatever else the machine does), where a rate on a shared 2-core VM
# moves by +-10 % from run to run. Use it to A/B a change to the hot path.
#
#   bench/callgrind.sh [BUILD_DIR] [P] [S]    default: build-bench, 16, 32
#
# Starts wshub --echo --workers 1 under callgrind, drives it with
# wshub-bench echo -c 100 -p P -s S (a 1 s warm-up, then 5 s counted:
# callgrind_control zeroes the counters before and dumps them after), and
# divides the instructions of that window by the messages the server
# counted in it (wshub_messages_in_total{endpoint="echo"} from /metrics).
# Under valgrind the CPU reports no AVX-512 and the kernels take AVX2.
# KEEP=FILE keeps the profile of the counted window, for
# `callgrind_annotate --threshold=100 --auto=yes FILE` (per source line
# with a RelWithDebInfo build such as `build`).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../build-bench}
P=${2:-16}
S=${3:-32}
tmp=$(mktemp -d)
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

echo_msgs() {
    /usr/bin/python3 - "$1" <<'EOF'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode()
for line in text.splitlines():
    if line.startswith('wshub_messages_in_total{endpoint="echo"}'):
        print(line.split()[-1])
EOF
}

valgrind --tool=callgrind --callgrind-out-file="$tmp/cg" "$build/src/server/wshub" \
    --listen 127.0.0.1:0 --workers 1 --echo --port-file "$tmp/port" 2>"$tmp/err" &
pid=$!
for _ in $(seq 150); do
    [ -s "$tmp/port" ] && break
    sleep 0.2
done
port=$(cat "$tmp/port")
bench="$build/src/tools/wshub-bench echo --port $port -c 100 -p $P -s $S --json"
$bench -d 1 >/dev/null
m0=$(echo_msgs "$port")
callgrind_control -z "$pid" >/dev/null 2>&1
$bench -d 5 >/dev/null
callgrind_control -d "$pid" >/dev/null 2>&1
m1=$(echo_msgs "$port")
ir=$(callgrind_annotate "$tmp/cg.1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
msgs=$((m1 - m0))
[ -n "${KEEP:-}" ] && cp "$tmp/cg.1" "$KEEP"
echo "echo 100 x $P x $S B: $ir instructions / $msgs messages = $((ir / msgs)) per message"
