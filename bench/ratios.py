#!/usr/bin/env python3
"""Ratio of wshub to rawecho per cell, from run.sh's JSON lines: the
ratio of the median rates, and the median of the per-repetition ratios
(each repetition ran the two back to back)."""
import json
import statistics
import sys
from collections import defaultdict

rates = defaultdict(lambda: defaultdict(list))
for line in open(sys.argv[1]):
    if line.startswith("{"):
        r = json.loads(line)
        rates[r["cell"]][r["server"]].append(r["rate"])

print("| cell | rawecho (median) | wshub (median) | ratio of medians | median of paired ratios | runs |")
print("|---|---|---|---|---|---|")
for cell, by in rates.items():
    raw, ws = by.get("rawecho", []), by.get("wshub", [])
    if not raw or not ws:
        continue
    pairs = [w / r for r, w in zip(raw, ws) if r > 0]
    print(f"| {cell} | {statistics.median(raw):,.0f}/s | {statistics.median(ws):,.0f}/s | "
          f"{100 * statistics.median(ws) / statistics.median(raw):.1f} % | "
          f"{100 * statistics.median(pairs):.1f} % | {len(pairs)} |")
