"""Turns build-rel/bench-sdk.json (bench/run.sh) into markdown tables and a PNG plot.

    python bench/report.py build-rel/bench-sdk.json bench/throughput.png

Prints the tables (streams/s and server CPU per stream, p99 per message, by concurrency, and
libextproc's ratio to each peer at its best point) and draws throughput and p99 against
concurrency for every server. matplotlib comes from the bench virtualenv (see bench/README.md).
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

doc = json.load(open(sys.argv[1]))
png = sys.argv[2]
points = doc["points"]
servers = [s for s in ("libextproc", "go-grpc", "python") if s in points]


def series(server):
    rows = []
    for conc, p in sorted(points[server].items(), key=lambda kv: int(kv[0])):
        if p.get("failed") or p.get("errors", {}).get("total"):
            continue
        rows.append((int(conc), p["streams_per_s"], p["server"]["cpu_us_per_stream"],
                     p["server"]["cpu_percent"], p["latency_us"]["message"]["p99"]))
    return rows


print("| server | concurrency | streams/s | server CPU µs/stream | server core % | p99/message µs |")
print("|---|---:|---:|---:|---:|---:|")
best = {}
for s in servers:
    for conc, sps, cpu, pct, p99 in series(s):
        print(f"| {s} | {conc} | {sps:,.0f} | {cpu:.1f} | {pct:.0f} | {p99:,.0f} |")
        # streams/s per core: throughput scaled to a full core, at the best point
        per_core = sps / (pct / 100) if pct else 0
        if per_core > best.get(s, (0, 0))[0]:
            best[s] = (per_core, cpu)
print()
print("| server | best streams/s per core | CPU µs/stream there | libextproc's ratio |")
print("|---|---:|---:|---:|")
base = best.get("libextproc", (0, 0))[0]
for s in servers:
    per_core, cpu = best[s]
    ratio = base / per_core if per_core else float("nan")
    print(f"| {s} | {per_core:,.0f} | {cpu:.1f} | {ratio:.1f}× |")
cg = doc.get("callgrind")
if cg:
    print()
    print(f"callgrind: {cg['instructions_per_stream']:,.0f} instructions per stream "
          f"({cg['streams']:,} streams; start-up subtracted)")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
for s in servers:
    rows = series(s)
    ax1.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", label=s)
    ax2.plot([r[0] for r in rows], [r[4] for r in rows], marker="o", label=s)
for ax, title, ylabel in ((ax1, "Throughput (one server core)", "streams/s"),
                          (ax2, "p99 latency per message", "µs")):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
fig.suptitle("Trivial processor, headers-only ext_proc streams (extproc-load)")
fig.tight_layout()
fig.savefig(png, dpi=110)
print(f"\nplot: {png}")
