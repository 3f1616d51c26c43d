"""Turns build-rel/bench-sdk.json (bench/run.sh) into markdown tables and a PNG plot.

    python bench/report.py build-rel/bench-sdk.json bench/throughput.png

Prints, for every server measured (libextproc, go-grpc, the two Go SDKs, python):
- streams/s, server CPU per stream, server core use and p99 per message, by concurrency;
- each server's best point: the highest streams/s (the server is pinned to one core, so this is
  streams/s per core) with the share of that core the server used there, and the lowest CPU
  µs/stream, with libextproc's ratio on both. Streams/s per core is only a fair figure where
  the server had its core (core % near 100): on a busy machine read the CPU column;
- the targets: libextproc against the faster of the two Go SDKs (go-wrossmorrow,
  go-getyourguide; "faster" taken per figure, so the harder comparison) and against python, in
  streams/s per core and in CPU µs/stream.
Servers the run skipped are named with the reason. Draws throughput and p99 against
concurrency for every server. matplotlib comes from the bench virtualenv (see bench/README.md).
"""

import json
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ORDER = ("libextproc", "go-grpc", "go-wrossmorrow", "go-getyourguide", "python")
GO_SDKS = ("go-wrossmorrow", "go-getyourguide")
# Issue 12's targets: libextproc's ratio to the faster Go SDK and to the Python SDK.
TARGETS = (("the faster Go SDK", GO_SDKS, 5.0), ("the Python SDK", ("python",), 100.0))

doc = json.load(open(sys.argv[1]))
png = sys.argv[2]
points = doc["points"]
servers = [s for s in ORDER if s in points]


def series(server):
    """(concurrency, streams/s, CPU µs/stream, core %, p99 µs) for every point without errors."""
    rows = []
    for conc, p in sorted(points[server].items(), key=lambda kv: int(kv[0])):
        if p.get("failed") or p.get("errors", {}).get("total"):
            continue
        rows.append((int(conc), p["streams_per_s"], p["server"]["cpu_us_per_stream"],
                     p["server"]["cpu_percent"], p["latency_us"]["message"]["p99"]))
    return rows


def best(server):
    """The highest streams/s and the lowest CPU µs/stream, each with its concurrency."""
    rows = series(server)
    if not rows:
        return None
    top = max(rows, key=lambda r: r[1])
    low = min(rows, key=lambda r: r[2])
    return {"sps": top[1], "sps_at": top[0], "sps_core": top[3], "cpu": low[2], "cpu_at": low[0]}


def fmt_ratio(x):
    return "n/a" if x is None or math.isnan(x) else f"{x:.1f}×"


print("| server | concurrency | streams/s | server CPU µs/stream | server core % | p99/message µs |")
print("|---|---:|---:|---:|---:|---:|")
for s in servers:
    for conc, sps, cpu, pct, p99 in series(s):
        print(f"| {s} | {conc} | {sps:,.0f} | {cpu:.1f} | {pct:.0f} | {p99:,.0f} |")

bests = {s: best(s) for s in servers if best(s)}
ours = bests.get("libextproc")
print()
print("| server | best streams/s (one core) | at concurrency | server core % there "
      "| lowest CPU µs/stream | at concurrency | libextproc's ratio, streams/s "
      "| libextproc's ratio, CPU/stream |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for s, b in bests.items():
    sps_ratio = ours["sps"] / b["sps"] if ours else None
    cpu_ratio = b["cpu"] / ours["cpu"] if ours else None
    print(f"| {s} | {b['sps']:,.0f} | {b['sps_at']} | {b['sps_core']:.0f} "
          f"| {b['cpu']:.1f} | {b['cpu_at']} "
          f"| {fmt_ratio(sps_ratio)} | {fmt_ratio(cpu_ratio)} |")

print()
print("| target | against | streams/s per core | CPU µs/stream | |")
print("|---|---|---:|---:|---|")
for label, names, want in TARGETS:
    measured = [n for n in names if n in bests]
    if not ours or not measured:
        print(f"| ≥ {want:.0f}× {label} | not measured | | | |")
        continue
    # The faster peer on each figure: the highest streams/s, and the lowest CPU per stream.
    fast_sps = max(measured, key=lambda n: bests[n]["sps"])
    fast_cpu = min(measured, key=lambda n: bests[n]["cpu"])
    sps_ratio = ours["sps"] / bests[fast_sps]["sps"]
    cpu_ratio = bests[fast_cpu]["cpu"] / ours["cpu"]
    met = [r >= want for r in (sps_ratio, cpu_ratio)]
    verdict = "met" if all(met) else "missed" if not any(met) else \
        "met in " + ("streams/s" if met[0] else "CPU/stream") + " only"
    against = fast_sps if fast_sps == fast_cpu else f"{fast_sps} (streams/s); {fast_cpu} (CPU)"
    print(f"| ≥ {want:.0f}× {label} | {against} | {fmt_ratio(sps_ratio)} "
          f"| {fmt_ratio(cpu_ratio)} | {verdict} |")

for s, reason in doc.get("skipped", {}).items():
    print(f"\nskipped: {s}: {reason}")
for s, build in doc.get("peer_builds", {}).items():
    print(f"\n{s}: {build['binary']}")
    for line in build.get("go_version_m", []):
        print(f"    {line}")
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
    ax.legend(fontsize="small")
fig.suptitle("Trivial processor, headers-only ext_proc streams (extproc-load)")
fig.tight_layout()
fig.savefig(png, dpi=110)
print(f"\nplot: {png}")
