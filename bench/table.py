#!/usr/bin/env python3
"""Turns wshub-bench --json lines (from run.sh) into the README's markdown
table: per (cell, server) the run with the median rate."""
import json
import sys
from collections import defaultdict

runs = defaultdict(list)
order = []
for line in open(sys.argv[1]):
    line = line.strip()
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    key = (r["cell"], r["server"])
    if key not in runs:
        order.append(key)
    runs[key].append(r)


def fmt(v, unit=""):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}{unit}"
    return f"{v:.1f}{unit}"


# Test-major order, so the servers for one test sit together.
cells = list(dict.fromkeys(k[0] for k in order))
servers = list(dict.fromkeys(k[1] for k in order))
order = [(c, s) for c in cells for s in servers if (c, s) in runs]

print("| test | server | rate | p50 | p99 | bench CPU/msg | server CPU/msg | other |")
print("|---|---|---|---|---|---|---|---|")
for key in order:
    rs = sorted(runs[key], key=lambda r: r["rate"])
    r = rs[len(rs) // 2]
    cell, server = key
    n = f" (median of {len(rs)})" if len(rs) > 1 else ""
    other = f"errors {r['errors']}"
    if r["mode"] == "fanout":
        other += f", lost {r['lost']:.0f}/{r['expected']:.0f}"
    if r.get("tls") or r.get("deflate") or "JSON" in cell:
        if r["mode"] == "echo":
            other += f", wire {r['wire_bytes_per_msg']:,.0f} B/round trip"
    if r.get("deflate"):
        other += f", deflate agreed on {r.get('pmd_conns', 0):.0f}"
    if r["mode"] == "idle":
        rate = f"{r['server_bytes_per_conn']:,.0f} B/conn"
        other += f", RSS {r['server_rss_before_kb']:.0f}->{r['server_rss_after_kb']:.0f} KiB"
        if "server_anon_bytes_per_conn" in r:
            other += (f", RssAnon {r['server_anon_bytes_per_conn']:,.0f} B/conn"
                      f" (warm-up {r.get('warmup_conns', 0):.0f})")
        print(f"| {cell} | {server} | {rate}{n} | - | - | "
              f"{fmt(r['bench_cpu_ns_per_msg'], ' ns')} | "
              f"{fmt(r.get('server_cpu_ns_per_msg'), ' ns')} | {other} |")
        continue
    print(f"| {cell} | {server} | {fmt(r['rate'])}/s{n} | "
          f"{fmt(r['p50_us'], ' us')} | {fmt(r['p99_us'], ' us')} | "
          f"{fmt(r['bench_cpu_ns_per_msg'], ' ns')} | "
          f"{fmt(r.get('server_cpu_ns_per_msg'), ' ns')} | {other} |")
