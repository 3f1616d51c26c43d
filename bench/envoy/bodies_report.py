#!/usr/bin/env python3
"""Turns bench/envoy/bodies.sh's raw results into a markdown report (stdout) and a JSON file.

usage: bodies_report.py RESULTS_DIR OUT_JSON

RESULTS_DIR holds rows.tsv (one line per row: name, processor, case, body bytes, connections,
outcome: "measured" or why the processor could not serve the case), settings.tsv, versions.tsv,
skipped.tsv (peers not available), commands.txt; and per measured row NAME.h2load (h2load's
output), NAME.cpu (two lines of "server=nanoseconds", before and after), NAME.mem (the
processor's idle and peak RSS) and NAME.stats-before / NAME.stats-after (Envoy's ext_proc
counters, "listener.counter value").
"""

import datetime
import json
import re
import sys
from pathlib import Path

MIB = 1 << 20
# Which listener (and so which ext_proc counters) each case goes through.
LISTENER = {"streamed-1m": "streamed", "duplex-1m": "duplex", "buffered-10m": "buffered",
            "buffered-1m": "buffered", "baseline-1m": "streamed", "baseline-10m": "buffered"}
CASE_LABEL = {"baseline-1m": "no filter, 1 MiB", "baseline-10m": "no filter, 10 MiB",
              "streamed-1m": "STREAMED 1 MiB", "duplex-1m": "FULL_DUPLEX_STREAMED 1 MiB",
              "buffered-10m": "BUFFERED 10 MiB", "buffered-1m": "BUFFERED 1 MiB"}
BASELINE = {"streamed-1m": "baseline-1m", "duplex-1m": "baseline-1m",
            "buffered-1m": "baseline-1m", "buffered-10m": "baseline-10m"}
COUNTERS = ["streams_started", "stream_msgs_sent", "stream_msgs_received", "streams_failed",
            "message_timeouts", "spurious_msgs_received", "failure_mode_allowed"]


def tsv(path):
    return dict(line.split("\t", 1) for line in Path(path).read_text().splitlines()
                if "\t" in line)


def h2load(path):
    text = Path(path).read_text()
    m = re.search(r"finished in ([\d.]+)(m?s)", text)
    seconds = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1) if m else 0.0
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if not (m and req and codes):
        return None
    ok = int(codes.group(1))
    return {"seconds": seconds, "requests_2xx": ok,
            "errors": int(req.group(5)) + int(req.group(6)) + int(req.group(7))
            + sum(int(codes.group(i)) for i in (2, 3, 4))}


def counters(path, listener):
    out = {}
    for line in Path(path).read_text().splitlines():
        name, _, value = line.partition(" ")
        prefix, _, counter = name.partition(".")
        if prefix == listener:
            out[counter] = int(value)
    return out


def measured_row(results, name, body_bytes, case):
    run = h2load(results / f"{name}.h2load")
    if run is None:
        return {"failed": "h2load printed no result"}
    before, after = (dict(kv.split("=") for kv in line.split())
                     for line in (results / f"{name}.cpu").read_text().splitlines()[:2])
    cpu_ns = {k: int(after[k]) - int(before[k]) for k in after}
    mem = dict(line.split("=") for line in (results / f"{name}.mem").read_text().split())
    listener = LISTENER[case]
    c0 = counters(results / f"{name}.stats-before", listener)
    c1 = counters(results / f"{name}.stats-after", listener)
    ext = {k: c1.get(k, 0) - c0.get(k, 0) for k in COUNTERS}
    n, secs = run["requests_2xx"], run["seconds"]
    mib = n * body_bytes / MIB
    row = {"requests_2xx": n, "errors": run["errors"], "seconds": secs,
           "requests_per_s": n / secs if secs else 0.0,
           "body_mb_per_s": n * body_bytes / secs / 1e6 if secs else 0.0,
           "cpu_ns": cpu_ns, "extproc": ext,
           "processor_idle_rss_kib": int(mem.get("idle_rss_kib", 0) or 0),
           "processor_peak_rss_kib": int(mem.get("peak_rss_kib", 0) or 0)}
    for server in ("envoy", "processor", "nginx"):
        ns = cpu_ns.get(server, 0)
        row[f"{server}_cpu_us_per_request"] = ns / n / 1e3 if n else None
        row[f"{server}_cpu_us_per_mib"] = ns / mib / 1e3 if mib else None
        row[f"{server}_core_percent"] = ns / (secs * 1e9) * 100 if secs else None
    started = ext["streams_started"]
    row["extproc_msgs_per_request"] = ext["stream_msgs_sent"] / started if started else None
    return row


def fmt(value, spec=",.1f"):
    return "–" if value is None else format(value, spec)


def main():
    results, out_json = Path(sys.argv[1]), Path(sys.argv[2])
    settings, versions = tsv(results / "settings.tsv"), tsv(results / "versions.tsv")
    skipped = tsv(results / "skipped.tsv") if (results / "skipped.tsv").exists() else {}
    lines = (results / "rows.tsv").read_text().splitlines()[1:]
    rows = []
    for line in lines:
        name, processor, case, body_bytes, conns, outcome = line.split("\t", 5)
        row = {"name": name, "processor": processor, "case": case, "body_bytes": int(body_bytes),
               "connections": int(conns)}
        if outcome == "measured":
            row.update(measured_row(results, name, int(body_bytes), case))
        else:
            row["failed"] = outcome
        rows.append(row)
    by_name = {r["name"]: r for r in rows}

    print(f"\n## Large request bodies through Envoy ({versions.get('envoy', '?')}), "
          f"one ext_proc filter\n")
    print(f"{settings['duration_s']} s per row after {settings['warmup_s']} s of warm-up; "
          f"h2load ({'HTTP/2' if settings.get('client') == 'h2' else 'HTTP/1.1'}) "
          f"-c{settings['connections']} (1 MiB bodies), "
          f"-c{settings['buffered_connections']} (10 MiB); Envoy (--concurrency 1) on core "
          f"{settings['cpu_envoy']}, the processor (one worker) on core "
          f"{settings['cpu_processor']}, nginx and h2load on core {settings['cpu_nginx']}. "
          "CPU from /proc/PID/task/*/schedstat over each measured run.\n")
    head = ("| case | processor | requests/s | body MB/s | ext_proc msgs/request | "
            "Envoy µs/request | Envoy µs/MiB | processor µs/request | processor µs/MiB | "
            "processor core % | processor RSS MiB: run start → peak | errors |")
    print(head)
    print("|" + "|".join("---" if i < 2 else "---:" for i in range(head.count("|") - 1)) + "|")
    for r in rows:
        label = CASE_LABEL.get(r["case"], r["case"])
        if "failed" in r:
            print(f"| {label} | {r['processor']} | {r['failed']} |" + " |" * 9)
            continue
        ext = r["extproc"]
        bad = ext["streams_failed"] + ext["message_timeouts"] + ext["spurious_msgs_received"]
        errors = f"{r['errors']}" + (f" (ext_proc: {bad})" if bad else "")
        proc = r["processor"] if r["processor"] != "none" else "– (filter disabled)"
        print(f"| {label} | {proc} | {fmt(r['requests_per_s'])} | {fmt(r['body_mb_per_s'])} | "
              f"{fmt(r['extproc_msgs_per_request'])} | "
              f"{fmt(r['envoy_cpu_us_per_request'])} | {fmt(r['envoy_cpu_us_per_mib'])} | "
              f"{fmt(r['processor_cpu_us_per_request'])} | "
              f"{fmt(r['processor_cpu_us_per_mib'])} | {fmt(r['processor_core_percent'])} | "
              f"{r['processor_idle_rss_kib'] / 1024:.1f} → "
              f"{r['processor_peak_rss_kib'] / 1024:.1f} | {errors} |")

    # What the filter costs: against the same body on /no-ext-procs.
    print("\nWhat the filter costs, against the same body with the filter disabled: requests/s "
          "÷ the baseline's, and the CPU per MiB that Envoy and the processor add.\n")
    print("| case | processor | requests/s ÷ baseline | Envoy µs/MiB added | "
          "processor µs/MiB | Envoy + processor µs/MiB added |")
    print("|---|---|---:|---:|---:|---:|")
    costs = {}
    for r in rows:
        base = by_name.get(BASELINE.get(r["case"], ""))
        if ("failed" in r or not base or "failed" in base or r["processor"] == "none"
                or not r["requests_2xx"] or not base["requests_2xx"]):
            continue
        ratio = r["requests_per_s"] / base["requests_per_s"] if base["requests_per_s"] else None
        envoy_added = r["envoy_cpu_us_per_mib"] - base["envoy_cpu_us_per_mib"]
        total = envoy_added + r["processor_cpu_us_per_mib"]
        costs[r["name"]] = {"throughput_ratio": ratio, "envoy_us_per_mib_added": envoy_added,
                            "processor_us_per_mib": r["processor_cpu_us_per_mib"],
                            "total_us_per_mib_added": total}
        print(f"| {CASE_LABEL[r['case']]} | {r['processor']} | {fmt(ratio, '.2f')} | "
              f"{fmt(envoy_added)} | {fmt(r['processor_cpu_us_per_mib'])} | {fmt(total)} |")
    for peer, why in skipped.items():
        print(f"\nskipped {peer}: {why}")
    print("\nVersions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))

    doc = {"generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "settings": settings, "versions": versions, "skipped": skipped, "rows": rows,
           "filter_cost": costs,
           "commands": (results / "commands.txt").read_text().splitlines()}
    out_json.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
