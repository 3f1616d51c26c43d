#!/usr/bin/env python3
"""Turns bench/envoy/run.sh's raw results into markdown tables (stdout) and a JSON file.

usage: report.py RESULTS_DIR OUT_JSON
       report.py --h2load H2LOAD_OUTPUT REQUEST_LOG DURATION_S   (one low-load run, as JSON)
       report.py --frames CAPTURE_TSV PROCESSOR_PORT REQUESTS      (one capture, as JSON)

RESULTS_DIR holds settings.tsv, versions.tsv, commands.tsv (KEY<TAB>VALUE lines) and
processors.tsv (NAME<TAB>measured|skipped<TAB>command or reason); per point KIND-LAYOUT-TARGET-rN
with .json (the load generator's figures), .probe-before/.probe-after ("KEY VALUE" lines: CPU
ns, context switches, TCP segment counters) and .stats-before/.stats-after (Envoy's counters
for TARGET's cluster and listener); frames-NAME.json per capture; extproc-stats.txt.
"""

import datetime
import json
import math
import re
import statistics
import sys
from pathlib import Path

LAYOUTS = [("onecore", "one core: Envoy, h2load, nginx and the processor on one core"),
           ("twocore", "two cores: the same, the processor on the other core")]
BYPASS = "bypass"
GO_SDKS = ["go-wrossmorrow", "go-getyourguide"]
RUN_NAME = re.compile(r"^(lowload|throughput)-(onecore|twocore|c\d+)-(.+)-r(\d+)\.json$")
# Issue 12, section 3.
TARGET_RATIO = 0.25  # libextproc's added p50 on one core ÷ the faster Go SDK's, at most
TARGET_ENVOY_EXTRA_CPU_US = 50  # Envoy's extra CPU per request with libextproc, at most

FRAME_TYPES = ["DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS", "PUSH_PROMISE", "PING",
               "GOAWAY", "WINDOW_UPDATE", "CONTINUATION"]
# The flags worth naming, per frame type (RFC 9113).
FRAME_FLAGS = {"DATA": [(0x1, "END_STREAM"), (0x8, "PADDED")],
               "HEADERS": [(0x1, "END_STREAM"), (0x4, "END_HEADERS"), (0x8, "PADDED"),
                           (0x20, "PRIORITY")],
               "SETTINGS": [(0x1, "ACK")], "PING": [(0x1, "ACK")],
               "CONTINUATION": [(0x4, "END_HEADERS")]}
P2E, E2P = "processor→envoy", "envoy→processor"
STALL_FRACTION = 0.25  # a point this far under its target's median rate is named as a stall
CAPTURE_SKIP_MAX = 10  # requests left out at the start of a capture: the connection's setup


# ---------------------------------------------------------------- one h2load run


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


# ---------------------------------------------------------------- one capture


def frame_label(ftype, flags, stream):
    name = FRAME_TYPES[ftype] if ftype < len(FRAME_TYPES) else f"type {ftype}"
    named = [n for bit, n in FRAME_FLAGS.get(name, []) if flags & bit]
    label = name + (f" [{','.join(named)}]" if named else "")
    return label + (" on stream 0" if stream == 0 else "")


def capture_packets(tsv, port):
    """tshark's fields, one line per packet: number, time, source port, TCP payload length,
    then the HTTP/2 frames it completes (types, flags, stream ids, lengths; comma lists)."""
    packets = []
    for line in Path(tsv).read_text().splitlines():
        cols = line.split("\t") + [""] * 8
        if not cols[0].isdigit():
            continue
        lists = [c.split(",") if c else [] for c in cols[4:8]]
        frames = [{"type": int(t), "flags": int(f, 0), "stream": int(s), "length": int(n)}
                  for t, f, s, n in zip(*lists)]
        packets.append({"n": int(cols[0]), "t": float(cols[1]),
                        "dir": P2E if cols[2] == str(port) else E2P,
                        "len": int(cols[3] or 0), "frames": frames})
    return packets


def describe_segment(p, t0):
    frames = ", ".join(f"{frame_label(f['type'], f['flags'], f['stream'])} ({f['length']} B)"
                       for f in p["frames"])
    return {"t_us": round((p["t"] - t0) * 1e6), "direction": p["dir"], "tcp_payload": p["len"],
            "frames": frames or ("(pure ACK)" if p["len"] == 0 else "(no whole frame)")}


def capture_report(tsv, port, requests_sent):
    """Frames and segments per request over a capture of sequential requests, after the first
    few (the connection's preface and settings); the connection-level frames over all of it;
    and one request's exchange in the middle, segment by segment."""
    packets = capture_packets(tsv, port)
    starts = []  # (packet index, stream) of each request: Envoy's HEADERS opening a stream
    seen = set()
    for i, p in enumerate(packets):
        for f in p["frames"]:
            if p["dir"] == E2P and f["type"] == 1 and f["stream"] and f["stream"] not in seen:
                seen.add(f["stream"])
                starts.append(i)
    skip = min(CAPTURE_SKIP_MAX, len(starts) // 10)
    if len(starts) <= skip + 1:
        return {"error": f"{len(starts)} requests found in the capture", "requests_sent":
                requests_sent}
    window = packets[starts[skip]:]
    n = len(starts) - skip
    frames, segs, acks, payload = {}, {P2E: 0, E2P: 0}, {P2E: 0, E2P: 0}, {P2E: 0, E2P: 0}
    for p in window:
        if p["len"]:
            segs[p["dir"]] += 1
            payload[p["dir"]] += p["len"]
        else:
            acks[p["dir"]] += 1
        for f in p["frames"]:
            key = f"{p['dir']}: {frame_label(f['type'], f['flags'], f['stream'])}"
            frames[key] = frames.get(key, 0) + 1
    connection = {}
    for p in packets:
        for f in p["frames"]:
            if f["stream"] == 0:
                key = f"{p['dir']}: {frame_label(f['type'], f['flags'], 0)}"
                connection[key] = connection.get(key, 0) + 1
    mid = skip + n // 2
    one = packets[starts[mid]:starts[mid + 1]] if mid + 1 < len(starts) else packets[starts[mid]:]
    return {
        "requests_sent": requests_sent,
        "requests_found": len(starts),
        "requests_counted": n,
        "frames_per_request": {k: round(v / n, 3) for k, v in sorted(frames.items())},
        "data_segments_per_request": {d: round(v / n, 3) for d, v in segs.items()},
        "pure_acks_per_request": {d: round(v / n, 3) for d, v in acks.items()},
        "tcp_payload_bytes_per_request": {d: round(v / n, 1) for d, v in payload.items()},
        "window_updates_per_request": {
            d: round(sum(v for k, v in frames.items()
                         if k.startswith(d) and "WINDOW_UPDATE" in k) / n, 3)
            for d in (P2E, E2P)},
        "connection_frames_whole_capture": dict(sorted(connection.items())),
        "one_request": [describe_segment(p, one[0]["t"]) for p in one],
    }


# ---------------------------------------------------------------- the whole run


def tsv(path):
    out = {}
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            if "\t" in line:
                key, value = line.split("\t", 1)
                out[key] = value
    return out


def keyvalues(path, sep):
    out = {}
    for line in Path(path).read_text().splitlines():
        key, _, value = line.partition(sep)
        if value.strip().lstrip("-").isdigit():
            out[key.strip()] = int(value)
    return out


def envoy_deltas(results, rid):
    """Envoy's counters that moved during the run, named without the processor's prefix."""
    before = keyvalues(results / f"{rid}.stats-before", ": ")
    after = keyvalues(results / f"{rid}.stats-after", ": ")
    out = {}
    for name, value in after.items():
        delta = value - before.get(name, 0)
        if delta:
            out[re.sub(r"^(cluster\.proc_|http\.ingress_)[a-z_]+\.", r"\1*.", name)] = delta
    return out


def median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def load_run(results, path):
    kind, layout, target, rnd = RUN_NAME.match(path.name).groups()
    rid = path.name[:-len(".json")]
    run = json.loads(path.read_text())
    before = keyvalues(results / f"{rid}.probe-before", " ")
    after = keyvalues(results / f"{rid}.probe-after", " ")
    delta = {k: after[k] - before.get(k, 0) for k in after}
    req = max(run["requests"], 1)
    envoy = envoy_deltas(results, rid)
    per = {
        "cpu_us": {k.split(".")[1]: round(v / 1000 / req, 2) for k, v in delta.items()
                   if k.startswith("cpu_ns.")},
        "context_switches": {k.split(".")[1]: round(v / req, 3) for k, v in delta.items()
                             if k.startswith("ctx.")},
        "tcp": {k.split(".")[1]: round(v / req, 3) for k, v in delta.items()
                if k.startswith("tcp.") and k != "tcp.sockets"},
    }
    rx = envoy.get("cluster.proc_*.upstream_cx_rx_bytes_total")
    tx = envoy.get("cluster.proc_*.upstream_cx_tx_bytes_total")
    if rx is not None or tx is not None:
        per["bytes"] = {"processor_to_envoy": round((rx or 0) / req, 1),
                        "envoy_to_processor": round((tx or 0) / req, 1)}
    run.update({"kind": kind, "layout": layout, "target": target, "round": int(rnd),
                "processor_sockets": after.get("tcp.sockets"), "per_request": per,
                "envoy_counters_delta": envoy})
    return run


def errors(run):
    return sum(run["errors"].values())


def per_request_medians(rs):
    """Each per-request figure (CPU, context switches, segments, bytes): median over runs."""
    out = {}
    for group in ("cpu_us", "context_switches", "tcp", "bytes"):
        keys = sorted({k for r in rs for k in r["per_request"].get(group, {})})
        out[group] = {k: median([r["per_request"].get(group, {}).get(k) for r in rs])
                      for k in keys}
    return out


def stalls(runs):
    """Points that served under a quarter of their target's median rate: a stall of the
    machine (or of a server) during the point. Kept, but named; the medians resist them."""
    out = []
    for r in runs:
        same = [o["rps"] for o in runs if (o["kind"], o["layout"], o["target"]) ==
                (r["kind"], r["layout"], r["target"])]
        if len(same) > 1 and r["rps"] < STALL_FRACTION * statistics.median(same):
            out.append(f"{r['kind']} {r['layout']} {r['target']} round {r['round']} "
                       f"({r['rps']:.0f} requests/s against a median of "
                       f"{statistics.median(same):.0f})")
    return out


def summarize(runs, targets):
    """Per layout and target, the per-round figures and their medians; the added latency and
    Envoy's extra CPU are taken against the bypass of the same round."""
    by = {(r["kind"], r["layout"], r["target"], r["round"]): r for r in runs}
    rounds = sorted({r["round"] for r in runs})
    low = {}
    for layout, _ in LAYOUTS:
        low[layout] = {}
        for t in targets:
            rs = [by.get(("lowload", layout, t, n)) for n in rounds]
            if not any(rs):
                continue
            base = [by.get(("lowload", layout, BYPASS, n)) for n in rounds]
            entry = {"p50_us": [], "p99_us": [], "added_p50_us": [], "added_p99_us": [],
                     "rps": [], "errors": 0}
            for r, b in zip(rs, base):
                if not r:
                    continue
                entry["p50_us"].append(r["latency_us"]["p50"])
                entry["p99_us"].append(r["latency_us"]["p99"])
                entry["rps"].append(r["rps"])
                entry["errors"] += errors(r)
                if b:
                    entry["added_p50_us"].append(r["latency_us"]["p50"] - b["latency_us"]["p50"])
                    entry["added_p99_us"].append(r["latency_us"]["p99"] - b["latency_us"]["p99"])
            for k in ("p50_us", "p99_us", "added_p50_us", "added_p99_us", "rps"):
                entry[k + "_median"] = median(entry[k])
            entry["per_request_median"] = per_request_medians([r for r in rs if r])
            low[layout][t] = entry
    thr = {}
    for t in targets:
        rs = [r for r in runs if r["kind"] == "throughput" and r["target"] == t]
        if not rs:
            continue
        rs.sort(key=lambda r: r["round"])
        entry = {"rps": [r["rps"] for r in rs], "errors": sum(errors(r) for r in rs),
                 "envoy_cpu_us": [r["per_request"]["cpu_us"]["envoy"] for r in rs],
                 "envoy_extra_cpu_us": [], "processor_cpu_us": [], "rounds": [r["round"] for r in rs]}
        for r in rs:
            b = by.get(("throughput", r["layout"], BYPASS, r["round"]))
            if b and t != BYPASS:
                entry["envoy_extra_cpu_us"].append(round(
                    r["per_request"]["cpu_us"]["envoy"] - b["per_request"]["cpu_us"]["envoy"], 2))
            entry["processor_cpu_us"].append(r["per_request"]["cpu_us"].get("processor"))
        med = {k: median(entry[k]) for k in ("rps", "envoy_cpu_us", "envoy_extra_cpu_us",
                                             "processor_cpu_us")}
        med.update(per_request_medians(rs))
        entry["median"] = med
        thr[t] = entry
    return low, thr


def judge(low, thr):
    """The issue's two targets: met, missed, or not judged (and why)."""
    out = []
    one = low.get("onecore", {})
    lib = (one.get("libextproc") or {}).get("added_p50_us_median")
    sdks = {s: one[s]["added_p50_us_median"] for s in GO_SDKS
            if s in one and one[s]["added_p50_us_median"] is not None}
    t1 = {"target": f"one core: libextproc's added p50 ≤ {TARGET_RATIO}× the faster Go SDK's"}
    if lib is None or not sdks:
        t1.update(status="not judged", why="neither Go SDK was measured in this run" if not sdks
                  else "libextproc's added p50 is missing")
    else:
        fastest = min(sdks, key=sdks.get)
        ratio = lib / sdks[fastest] if sdks[fastest] > 0 else math.inf
        t1.update(status="met" if ratio <= TARGET_RATIO else "missed", libextproc_us=lib,
                  faster_sdk=fastest, faster_sdk_us=sdks[fastest], ratio=round(ratio, 3))
    grpc = (one.get("go-grpc") or {}).get("added_p50_us_median")
    if lib is not None and grpc:
        t1["ratio_to_go_grpc"] = round(lib / grpc, 3) if grpc > 0 else None
    out.append(t1)
    extra = ((thr.get("libextproc") or {}).get("median") or {}).get("envoy_extra_cpu_us")
    t2 = {"target": f"Envoy's extra CPU per request with libextproc ≤ "
                    f"{TARGET_ENVOY_EXTRA_CPU_US} µs at the throughput load"}
    if extra is None:
        t2.update(status="not judged", why="no throughput figure for libextproc")
    else:
        t2.update(status="met" if extra <= TARGET_ENVOY_EXTRA_CPU_US else "missed",
                  libextproc_us=extra)
    out.append(t2)
    return out


def fmt(v, digits=1, unit=""):
    if v is None:
        return "–"
    if isinstance(v, float):
        v = round(v, digits)
        if digits == 0:
            v = int(v)
    return f"{v:,}{unit}" if isinstance(v, int) else f"{v:,.{digits}f}{unit}"


def per_round(values, digits=0):
    return " / ".join(fmt(float(v), digits) for v in values) if values else "–"


def print_report(rep):
    p = print
    s = rep["settings"]
    conns = s.get("throughput_connections", "?")
    names = [n for n in rep["processors"] if rep["processors"][n]["status"] == "measured"]
    low, thr = rep["low_load"], rep["throughput"]
    p(f"## Envoy 1.40, one ext_proc filter, headers only: {s.get('rounds')} interleaved rounds, "
      f"{s.get('duration_s')} s per point after {s.get('warmup_s')} s warm-up\n")
    p("Medians over the rounds. Added = the processor's listener minus the bypass route "
      "(/no-ext-procs), same round and layout. Throughput columns at "
      f"wrk -c{conns}, per request.\n")
    p("| processor | added p50, one core | added p99, one core | added p50, two cores "
      "| added p99, two cores | Envoy's extra CPU | processor's CPU | segments P→E / E→P "
      "| context switches Envoy / processor | bytes P→E / E→P |")
    p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in [BYPASS] + names:
        lo1 = low.get("onecore", {}).get(n, {})
        lo2 = low.get("twocore", {}).get(n, {})
        m = thr.get(n, {}).get("median", {})
        tcp, ctx, by = m.get("tcp", {}), m.get("context_switches", {}), m.get("bytes", {})
        label = "bypass (`/no-ext-procs`)" if n == BYPASS else n
        if n == BYPASS:
            cells = [f"p50 {fmt(lo1.get('p50_us_median'), 0)} µs", f"p99 {fmt(lo1.get('p99_us_median'), 0)} µs",
                     f"p50 {fmt(lo2.get('p50_us_median'), 0)} µs", f"p99 {fmt(lo2.get('p99_us_median'), 0)} µs",
                     f"Envoy {fmt(m.get('envoy_cpu_us'))} µs", "–", "–",
                     f"{fmt(ctx.get('envoy'), 2)} / –", "–"]
        else:
            cells = [fmt(lo1.get("added_p50_us_median"), 0, " µs"),
                     fmt(lo1.get("added_p99_us_median"), 0, " µs"),
                     fmt(lo2.get("added_p50_us_median"), 0, " µs"),
                     fmt(lo2.get("added_p99_us_median"), 0, " µs"),
                     fmt(m.get("envoy_extra_cpu_us"), 1, " µs"),
                     fmt(m.get("processor_cpu_us"), 1, " µs"),
                     f"{fmt(tcp.get('segs_proc_to_envoy'), 2)} / {fmt(tcp.get('segs_envoy_to_proc'), 2)}",
                     f"{fmt(ctx.get('envoy'), 2)} / {fmt(ctx.get('processor'), 2)}",
                     f"{fmt(by.get('processor_to_envoy'), 0)} / {fmt(by.get('envoy_to_processor'), 0)}"]
        p(f"| {label} | " + " | ".join(cells) + " |")
    p("\nSegments: every TCP segment on the processor's sockets (pure ACKs included), from "
      "`ss -ti` segs_out/segs_in; the data-carrying ones are in the throughput table below. "
      "Bytes: Envoy's upstream_cx_rx/tx_bytes_total on the processor's cluster. P→E: "
      "processor to Envoy.")
    p("\n### Targets\n")
    for t in rep["targets"]:
        if t["status"] == "not judged":
            line = f"- {t['target']}: **not judged** ({t['why']})"
        elif "ratio" in t:
            line = (f"- {t['target']}: {fmt(t['libextproc_us'], 0)} µs against "
                    f"{t['faster_sdk']}'s {fmt(t['faster_sdk_us'], 0)} µs = {t['ratio']:.2f}×: "
                    f"**{t['status']}**")
        else:
            line = f"- {t['target']}: {fmt(t['libextproc_us'])} µs: **{t['status']}**"
        if t.get("ratio_to_go_grpc") is not None:
            line += f" (against go-grpc: {t['ratio_to_go_grpc']:.2f}×)"
        p(line)
    for layout, description in LAYOUTS:
        p(f"\n### Low load, {description}: h2load --h1 -c1 -m1, per round\n")
        p("| target | p50 µs | p99 µs | added p50 µs | added p99 µs | requests/s "
          "| CPU µs/request Envoy / processor | segments P→E / E→P "
          "| context switches Envoy / processor | errors |")
        p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in [BYPASS] + names:
            e = low.get(layout, {}).get(n)
            if not e:
                continue
            m = e["per_request_median"]
            cpu, tcp, ctx = m["cpu_us"], m["tcp"], m["context_switches"]
            p(f"| {n} | {per_round(e['p50_us'])} | {per_round(e['p99_us'])} "
              f"| {per_round(e['added_p50_us']) if n != BYPASS else '–'} "
              f"| {per_round(e['added_p99_us']) if n != BYPASS else '–'} "
              f"| {fmt(e['rps_median'], 0)} "
              f"| {fmt(cpu.get('envoy'))} / {fmt(cpu.get('processor'))} "
              f"| {fmt(tcp.get('segs_proc_to_envoy'), 2)} / {fmt(tcp.get('segs_envoy_to_proc'), 2)} "
              f"| {fmt(ctx.get('envoy'), 2)} / {fmt(ctx.get('processor'), 2)} | {e['errors']} |")
        p("\n(Per-request columns: medians over the rounds. Segments: all of them, pure ACKs "
          "included, from `ss -ti`.)")
    p(f"\n### Throughput: wrk -t1 -c{conns}, Envoy and the processor on core "
      f"{s.get('cpu_envoy_throughput')}/{s.get('cpu_processor_throughput')}, nginx and wrk on "
      f"core {s.get('cpu_nginx_throughput')}/{s.get('cpu_wrk')}; per round\n")
    p("| target | requests/s | Envoy CPU µs/request | Envoy's extra µs | processor µs "
      "| data segments P→E / E→P | errors |")
    p("|---|---:|---:|---:|---:|---:|---:|")
    for n in [BYPASS] + names:
        e = thr.get(n)
        if not e:
            continue
        tcp = e["median"].get("tcp", {})
        p(f"| {n} | {per_round(e['rps'])} | {per_round(e['envoy_cpu_us'], 1)} "
          f"| {per_round(e['envoy_extra_cpu_us'], 1)} "
          f"| {per_round([v for v in e['processor_cpu_us'] if v is not None], 1)} "
          f"| {fmt(tcp.get('data_segs_proc_to_envoy'), 2)} / "
          f"{fmt(tcp.get('data_segs_envoy_to_proc'), 2)} | {e['errors']} |")
    frames = rep.get("frames", {})
    if frames:
        p(f"\n### HTTP/2 frames per request (tcpdump + tshark, requests one at a time, the "
          f"first {CAPTURE_SKIP_MAX} left out)\n")
        keys = sorted({k for f in frames.values() for k in f.get("frames_per_request", {})})
        p("| frame | " + " | ".join(frames) + " |")
        p("|---|" + "---:|" * len(frames))
        for k in keys:
            p(f"| {k} | " + " | ".join(fmt(f.get("frames_per_request", {}).get(k), 2)
                                       for f in frames.values()) + " |")
        for label, field in (("segments with data", "data_segments_per_request"),
                             ("pure ACKs", "pure_acks_per_request"),
                             ("TCP payload bytes", "tcp_payload_bytes_per_request")):
            for d in (P2E, E2P):
                p(f"| {d}: {label} | " + " | ".join(fmt(f.get(field, {}).get(d), 2)
                                                      for f in frames.values()) + " |")
        p("\nConnection-level frames (stream 0) over the whole capture, setup included:\n")
        for n, f in frames.items():
            conn = ", ".join(f"{k} ×{v}" for k, v in f.get("connection_frames_whole_capture",
                                                           {}).items())
            p(f"- {n}: {conn or 'none'}")
        for n, f in frames.items():
            p(f"\nOne request through {n}, segment by segment:\n")
            p("| µs | direction | TCP payload | frames |")
            p("|---:|---|---:|---|")
            for seg in f.get("one_request", []):
                p(f"| {seg['t_us']} | {seg['direction']} | {seg['tcp_payload']} | {seg['frames']} |")
    if rep.get("six"):
        six = rep["six"]
        p("\n### The demo's six filters (BENCH_SIX=1; deploy/envoy.yaml, one round)\n")
        p("| route | low load p50 µs | p99 µs | wrk requests/s | Envoy CPU µs/request "
          "| processor µs/request |")
        p("|---|---:|---:|---:|---:|---:|")
        for route, key in (("/", "six"), ("/no-ext-procs", "six_bypass")):
            lo, th = six.get("lowload", {}).get(key), six.get("throughput", {}).get(key)
            p(f"| `{route}` | {fmt(lo and lo['latency_us']['p50'])} "
              f"| {fmt(lo and lo['latency_us']['p99'])} | {fmt(th and th['rps'], 0)} "
              f"| {fmt(th and th['per_request']['cpu_us'].get('envoy'))} "
              f"| {fmt(th and th['per_request']['cpu_us'].get('processor'))} |")
    p("\n### Processors\n")
    for n, info in rep["processors"].items():
        p(f"- {n}: {info['status']}: `{info['detail']}`" if info["status"] == "measured"
          else f"- {n}: **skipped**: {info['detail']}")
    p("\n### Versions\n")
    for key, value in rep["versions"].items():
        p(f"- {key}: {value}")
    p("\n### Commands\n")
    p("```")
    for key, value in rep["commands"].items():
        p(f"# {key}\n{value}")
    p("```")
    bad = [f"{r['kind']} {r['layout']} {r['target']} round {r['round']}"
           for r in rep["runs"] if errors(r)]
    if bad:
        p(f"\nWARNING: errors (non-2xx, timeouts or socket errors) in: {', '.join(bad)}")
    if rep["stalls"]:
        p(f"\nWARNING: stalled points (under {STALL_FRACTION}× their target's median rate; "
          f"kept, the medians resist one): {'; '.join(rep['stalls'])}")


def main():
    if sys.argv[1] == "--h2load":
        print(json.dumps(h2load_run(*sys.argv[2:5])))
        return
    if sys.argv[1] == "--frames":
        print(json.dumps(capture_report(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])),
                         indent=1, ensure_ascii=False))
        return
    results, out_json = Path(sys.argv[1]), Path(sys.argv[2])
    processors = {}
    for line in (results / "processors.tsv").read_text().splitlines():
        name, status, detail = line.split("\t", 2)
        processors[name] = {"status": status, "detail": detail}
    runs = [load_run(results, f) for f in sorted(results.glob("*.json"))
            if RUN_NAME.match(f.name)]
    main_runs = [r for r in runs if not r["target"].startswith("six")]
    measured = [n for n, i in processors.items() if i["status"] == "measured"]
    low, thr = summarize(main_runs, [BYPASS] + measured)
    report = {
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": tsv(results / "settings.tsv"),
        "versions": tsv(results / "versions.tsv"),
        "commands": tsv(results / "commands.tsv"),
        "processors": processors,
        "notes": {
            "added_latency": "p50 (p99) of h2load -c1 on the processor's listener minus the "
                             "same round's and layout's on /no-ext-procs; medians over rounds",
            "envoy_extra_cpu_us": "Envoy's CPU per request on the processor's listener minus "
                                  "on /no-ext-procs, same round, at the throughput load",
            "tcp": "segments on the processor's sockets per request (ss -ti segs_out/segs_in: "
                   "all segments; data_segs_*: those with payload); proc_to_envoy = the "
                   "processor's segs_out",
            "bytes": "Envoy's cluster upstream_cx_rx_bytes_total (processor to Envoy) and "
                     "upstream_cx_tx_bytes_total per request",
            "frames": "tcpdump of sequential requests before any other traffic, decoded by "
                      "tshark; per request over all but the first few",
        },
        "low_load": low,
        "throughput": thr,
        "targets": judge(low, thr),
        "stalls": stalls(main_runs),
        "frames": {n: json.loads((results / f"frames-{n}.json").read_text())
                   for n in measured if (results / f"frames-{n}.json").exists()},
        "runs": main_runs,
    }
    six = [r for r in runs if r["target"].startswith("six")]
    if six:
        report["six"] = {k: {r["target"]: r for r in six if r["kind"] == k}
                         for k in ("lowload", "throughput")}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print_report(report)


if __name__ == "__main__":
    main()
