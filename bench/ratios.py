#!/usr/bin/env python3
"""Ratio of wshub to rawecho per cell, from run.sh's JSON lines: the
ratio of the median rates, and the median of the per-repetition ratios
(each repetition ran the servers back to back). Cells that also ran
rawframe (rawecho sending wshub's reply bytes in wshub's layout) get a
second table: wshub against that, and rawframe against rawecho, which is
what the frame header alone costs the kernel."""
import json
import statistics
import sys
from collections import defaultdict

rates = defaultdict(lambda: defaultdict(list))
for line in open(sys.argv[1]):
    if line.startswith("{"):
        r = json.loads(line)
        rates[r["cell"]][r["server"]].append(r["rate"])


def row(cell, base, other):
    pairs = [o / b for b, o in zip(base, other) if b > 0]
    return (f"| {cell} | {statistics.median(base):,.0f}/s | {statistics.median(other):,.0f}/s | "
            f"{100 * statistics.median(other) / statistics.median(base):.1f} % | "
            f"{100 * statistics.median(pairs):.1f} % | {len(pairs)} |")


print("| cell | rawecho (median) | wshub (median) | ratio of medians | median of paired ratios | runs |")
print("|---|---|---|---|---|---|")
for cell, by in rates.items():
    if by.get("rawecho") and by.get("wshub"):
        print(row(cell, by["rawecho"], by["wshub"]))

framed = [(cell, by) for cell, by in rates.items() if by.get("rawframe")]
if framed:
    print()
    print("| cell | against | baseline (median) | measured (median) | ratio of medians | median of paired ratios | runs |")
    print("|---|---|---|---|---|---|---|")
    for cell, by in framed:
        if by.get("wshub"):
            print(row(f"{cell} | wshub / rawframe", by["rawframe"], by["wshub"]))
        if by.get("rawecho"):
            print(row(f"{cell} | rawframe / rawecho", by["rawecho"], by["rawframe"]))
