#!/usr/bin/env bash
# Smoke test of the scripts bench/README.md's numbers come from: run.sh's
# TARGETS/ONLY path (one round of 1 s runs of a 32 B and the 16 KiB cell) and callgrind.sh.
# It checks that each ran what it says and reported it, not the numbers.
#
#   bench/test-scripts.sh BUILD_DIR
set -u
here=$(cd "$(dirname "$0")" && pwd)
build=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
check() { # check COND-EXIT-STATUS WHAT
    if [ "$1" = 0 ]; then echo "ok   $2"; else echo "FAIL $2"; fails=$((fails + 1)); fi
}

TARGETS=1 REPS_T=1 DUR_T=1 ONLY="echo 100x1 32B" OUT="$tmp/out.jsonl" \
    bash "$here/run.sh" "$build" >"$tmp/run.log" 2>&1
cat "$tmp/run.log"
/usr/bin/python3 - "$tmp/out.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
want = [("rawecho", "raw"), ("wshub", "ws")]
got = [(r["server"], r["target"]) for r in rows]
assert got == want, f"runs {got}, want {want}"
for r in rows:
    assert r["cell"] == "echo 100x1 32B", r["cell"]
    assert r["errors"] == 0 and r["bad_echo"] == 0 and r["msgs"] > 0, r
    assert r["conns"] == 100 and r["pipeline"] == 1 and r["size"] == 32, r
    assert r["server_cpu_ns_per_msg"] > 0 and r["engine"] == "uring", r
PY
check $? "run.sh TARGETS=1 ONLY=...: one rawecho and one wshub run of that cell only, 0 errors"
grep -q '^| echo 100x1 32B | [0-9,]*/s | [0-9,]*/s | [0-9.]* % | [0-9.]* % | 1 |$' "$tmp/run.log"
check $? "run.sh: the ratio table has the cell's row"

TARGETS=1 REPS_T=1 DUR_T=1 ONLY="echo 100x1 16KiB" OUT="$tmp/frame.jsonl" \
    bash "$here/run.sh" "$build" >"$tmp/frame.log" 2>&1
cat "$tmp/frame.log"
/usr/bin/python3 - "$tmp/frame.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
got = [(r["server"], r["size"]) for r in rows]
want = [("rawecho", 16384), ("wshub", 16384), ("rawframe", 16388)]
assert got == want, f"runs {got}, want {want}"
for r in rows:
    assert r["errors"] == 0 and r["bad_echo"] == 0 and r["msgs"] > 0, r
PY
check $? "run.sh TARGETS=1, 16 KiB cell: rawframe echoes 16,388-byte messages beside rawecho and wshub"
grep -q '^| echo 100x1 16KiB | wshub / rawframe | [0-9,]*/s | [0-9,]*/s | [0-9.]* % | [0-9.]* % | 1 |$' "$tmp/frame.log"
check $? "run.sh: the rawframe table has wshub / rawframe"

if command -v valgrind >/dev/null && command -v callgrind_control >/dev/null; then
    out=$(bash "$here/callgrind.sh" "$build" 16 32 2>&1)
    echo "$out"
    echo "$out" | grep -Eq '^echo 100 x 16 x 32 B: [1-9][0-9]* instructions / [1-9][0-9]* messages = [1-9][0-9]* per message$'
    check $? "callgrind.sh: instructions per echoed message reported"
else
    echo "FAIL valgrind is not installed (scripts/install-deps.sh installs it)"
    fails=$((fails + 1))
fi
[ "$fails" = 0 ] && echo "all checks passed"
exit $((fails > 0))
