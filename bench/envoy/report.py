#!/usr/bin/env python3
"""Turns bench/envoy/run.sh's raw results into a markdown report (stdout) and a JSON file.

usage: report.py RESULTS_DIR OUT_JSON
       report.py --h2load H2LOAD_OUTPUT REQUEST_LOG DURATION_S   (one low-load run, as JSON)

RESULTS_DIR holds settings.tsv, versions.tsv, commands.tsv (KEY<TAB>VALUE lines); per run
CONFIG-KIND-ROUTE.json (figures) and CONFIG-KIND-ROUTE.cpu.json (nanoseconds each server spent
on CPU during it); and CONFIG-extproc-stats.txt (Envoy's ext_proc counters at the end).
"""

import datetime
import json
import math
import re
import sys
from pathlib import Path

CONFIGS = [
    ("one", 1, "one ext_proc filter (trivial; headers SEND, bodies NONE, trailers SKIP)"),
    ("six", 6, "the demo's six filters (deploy/envoy.yaml; headers SEND, bodies BUFFERED, "
               "trailers SKIP)"),
]
ROUTES = [("filtered", "/"), ("bypass", "/no-ext-procs")]
KINDS = [("latency", "low_load"), ("throughput", "throughput")]
SERVERS = ["envoy", "processor", "nginx"]
# Envoy's ext_proc counters worth showing: how much went to the processors, and anything bad.
COUNTERS = ["streams_started", "stream_msgs_sent", "stream_msgs_received", "streams_failed",
            "failure_mode_allowed", "message_timeouts", "spurious_msgs_received",
            "rejected_header_mutations"]


def h2load_run(output, request_log, duration_s):
    """One h2load run: exact percentiles of the logged requests' durations (µs)."""
    text = Path(output).read_text()
    lat = sorted(int(line.split("\t")[2]) for line in Path(request_log).read_text().splitlines()
                 if line.count("\t") == 2)
    if not lat:
        sys.exit(f"{request_log}: no request logged")

    def pct(p):  # nearest rank
        return lat[max(0, math.ceil(p / 100 * len(lat)) - 1)]

    def count(pattern):
        m = re.search(pattern, text)
        return int(m.group(1)) if m else 0

    m = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", text)
    return {
        "requests": len(lat),
        "duration_us": int(float(duration_s) * 1e6),
        "rps": float(m.group(1)) if m else round(len(lat) / float(duration_s), 1),
        "latency_us": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "p999": pct(99.9),
                       "mean": round(sum(lat) / len(lat), 1), "min": lat[0], "max": lat[-1]},
        "errors": {"failed": count(r"(\d+) failed"), "errored": count(r"(\d+) errored"),
                   "timeout": count(r"(\d+) timeout"),
                   "status": sum(count(rf"(\d+) {c}xx") for c in "345")},
    }


def tsv(path):
    out = {}
    for line in Path(path).read_text().splitlines():
        if "\t" in line:
            key, value = line.split("\t", 1)
            out[key] = value
    return out


def extproc_counters(path):
    """Sums each counter of COUNTERS over the filters (stat names end in .COUNTER)."""
    sums = {c: 0 for c in COUNTERS}
    if not Path(path).exists():
        return sums
    for line in Path(path).read_text().splitlines():
        name, _, value = line.partition(": ")
        last = name.rsplit(".", 1)[-1]
        if last in sums and value.strip().isdigit():
            sums[last] += int(value)
    return sums


def errors(run):
    return sum(run["errors"].values())


def load_run(results, name, kind, route):
    run = json.loads((results / f"{name}-{kind}-{route}.json").read_text())
    cpu = json.loads((results / f"{name}-{kind}-{route}.cpu.json").read_text())
    run["cpu_us_per_request"] = {s: round(cpu.get(s, 0) / 1000 / max(run["requests"], 1), 2)
                                 for s in SERVERS}
    return run


def main():
    if sys.argv[1] == "--h2load":
        print(json.dumps(h2load_run(*sys.argv[2:5])))
        return
    results, out_json = Path(sys.argv[1]), Path(sys.argv[2])
    settings, versions = tsv(results / "settings.tsv"), tsv(results / "versions.tsv")
    commands = tsv(results / "commands.tsv")
    report = {
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
        "versions": versions,
        "commands": commands,
        "notes": {
            "low_load": "h2load --h1 -c1 -m1; percentiles of every request's own latency",
            "throughput": "wrk -t1; its latency percentiles include wrk's coordinated-omission "
                          "correction",
            "added_p50_latency_per_filter_us": "(low-load p50 on / - p50 on /no-ext-procs) / "
                                               "filters",
            "cpu_us_per_request": "CPU time each server spent during the run / requests",
        },
        "configs": {},
    }
    for name, filters, description in CONFIGS:
        runs = {key: {route: load_run(results, name, kind, route) for route, _ in ROUTES}
                for kind, key in KINDS}
        lat, thr = runs["low_load"], runs["throughput"]
        added = lat["filtered"]["latency_us"]["p50"] - lat["bypass"]["latency_us"]["p50"]
        proc_cpu = lat["filtered"]["cpu_us_per_request"]["processor"]
        report["configs"][name] = {
            "description": description,
            "filters": filters,
            **runs,
            "added_p50_latency_us": added,
            "added_p50_latency_per_filter_us": round(added / filters, 1),
            "processor_cpu_us_per_request_per_filter": round(proc_cpu / filters, 2),
            "throughput_ratio": round(thr["filtered"]["rps"] / thr["bypass"]["rps"], 3),
            "envoy_ext_proc_counters": extproc_counters(results / f"{name}-extproc-stats.txt"),
        }

    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(report, indent=2) + "\n")

    conns = settings.get("throughput_connections", "?")
    p = print
    p(f"## Envoy + libextproc: {settings.get('duration_s')} s per run after "
      f"{settings.get('warmup_s')} s warm-up\n")
    p("| configuration | added p50 latency per filter (low load) | processor CPU per request "
      "per filter | throughput with filter(s) ÷ bypass |")
    p("|---|---:|---:|---:|")
    for name, filters, _ in CONFIGS:
        c = report["configs"][name]
        p(f"| {name}: {filters} filter{'s' if filters > 1 else ''} "
          f"| {c['added_p50_latency_per_filter_us']:.1f} µs "
          f"| {c['processor_cpu_us_per_request_per_filter']:.1f} µs "
          f"| {c['throughput_ratio']:.3f} |")
    p("\n### Low load: h2load --h1 -c1 -m1 (one request at a time), all on one core\n")
    p("| configuration | route | requests/s | p50 µs | p90 µs | p99 µs | p99.9 µs | errors "
      "| CPU µs/request: Envoy | processor | nginx |")
    p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, _, _ in CONFIGS:
        for route, path in ROUTES:
            r = report["configs"][name]["low_load"][route]
            l, c = r["latency_us"], r["cpu_us_per_request"]
            p(f"| {name} | `{path}` | {r['rps']:.0f} | {l['p50']} | {l['p90']} | {l['p99']} "
              f"| {l['p999']} | {errors(r)} | {c['envoy']:.1f} | {c['processor']:.1f} "
              f"| {c['nginx']:.1f} |")
    p(f"\n### Throughput: wrk -t1 -c{conns}\n")
    p("| configuration | route | requests/s | p50 µs | p99 µs | errors "
      "| CPU µs/request: Envoy | processor | nginx |")
    p("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, _, _ in CONFIGS:
        for route, path in ROUTES:
            r = report["configs"][name]["throughput"][route]
            l, c = r["latency_us"], r["cpu_us_per_request"]
            p(f"| {name} | `{path}` | {r['rps']:.0f} | {l['p50']} | {l['p99']} | {errors(r)} "
              f"| {c['envoy']:.1f} | {c['processor']:.1f} | {c['nginx']:.1f} |")
    p("\n(wrk's latency percentiles include its coordinated-omission correction.)")
    p("\n### Envoy's ext_proc counters (summed over the filters, whole configuration)\n")
    p("| configuration | " + " | ".join(COUNTERS) + " |")
    p("|---|" + "---:|" * len(COUNTERS))
    for name, _, _ in CONFIGS:
        c = report["configs"][name]["envoy_ext_proc_counters"]
        p(f"| {name} | " + " | ".join(str(c[k]) for k in COUNTERS) + " |")
    p("\nConfigurations:")
    for name, _, description in CONFIGS:
        p(f"- {name}: {description}")
    p(f"\nCPU pinning: low load, everything (Envoy, processor, nginx, h2load) on core "
      f"{settings.get('cpu_low_load')}; throughput, Envoy on core {settings.get('cpu_envoy')}, "
      f"processor on core {settings.get('cpu_processor')}, nginx on core "
      f"{settings.get('cpu_nginx')}, wrk on core {settings.get('cpu_wrk')} "
      "(see bench/envoy/run.sh for why).")
    p("\n### Versions\n")
    for key, value in versions.items():
        p(f"- {key}: {value}")
    p("\n### Commands\n")
    p("```")
    for key, value in commands.items():
        p(f"# {key}\n{value}")
    p("```")
    bad = [f"{name} {key} {route}" for name, _, _ in CONFIGS for _, key in KINDS
           for route, _ in ROUTES if errors(report["configs"][name][key][route])]
    if bad:
        p(f"\nWARNING: errors (non-2xx, timeouts or socket errors) in: {', '.join(bad)}")


if __name__ == "__main__":
    main()
