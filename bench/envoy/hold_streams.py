#!/usr/bin/env python3
"""Opens many ext_proc streams on a processor and holds them open, reading the processor's RSS.

usage: hold_streams.py --port PORT --pid PID [--streams 10000] [--connections 4]
                       [--idle-connections 5000] [--no-conn-stream] [--settle SECONDS]
                       [--hold SECONDS] [--timeout SECONDS] [--json OUT]

Each stream is what Envoy opens for one request: a gRPC call to
envoy.service.ext_proc.v3.ExternalProcessor/Process carrying one ProcessingRequest with
request_headers (the headers Envoy forwards for a curl GET, end_of_stream false so the stream
goes on). Once the processor has answered it, the stream is left open: no END_STREAM, no reset,
just like Envoy waiting for the upstream's response headers.

First, with --idle-connections N (0: skipped), N connections as Envoy keeps them between
requests: each sends the preface and SETTINGS, gets the processor's SETTINGS and the ACK of its
own, and (unless --no-conn-stream) carries one ext_proc stream to its reply, then resets it as
Envoy resets every finished ext_proc stream; then all N are held idle (conns_open) and closed
(conns_closed). That gives bytes per idle connection, and what RSS comes back to after a burst of
connections.

VmRSS (and RssAnon) of PID is read from /proc at these points: idle (before any connection),
conns_open and conns_closed (the burst of idle connections), connected (the connections set up, no stream yet), open (every stream answered and held) and
closed (after the connections are closed); then the same again on new connections (open_round2,
closed_round2), which shows whether the first round's memory is reused. Each "closed" point is
read --settle seconds after the close (default 2.5: the processor gives freed memory back to the
system at most once a second per worker, after a one-second delay). Prints a JSON object;
exits non-zero if a stream was not answered or was ended by the processor. Everything is
bounded by --timeout.
"""

import argparse
import json
import selectors
import socket
import sys
import time
import uuid

import h2.config
import h2.connection
import h2.events
import h2.settings

PATH = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"


# ---------------------------------------------------------------- protobuf, by hand

def varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, payload):  # a length-delimited field
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def processing_request(i):
    """ProcessingRequest{request_headers: HttpHeaders{headers: HeaderMap, end_of_stream: false}}"""
    headers = [
        (":authority", "127.0.0.1:8080"), (":path", f"/something/{i}"), (":method", "GET"),
        (":scheme", "http"), ("user-agent", "curl/7.88.1"), ("accept", "*/*"),
        ("x-forwarded-proto", "http"), ("x-request-id", str(uuid.uuid4())),
        ("x-envoy-expected-rq-timeout-ms", "15000"),
    ]
    # HeaderValue{key = 1, raw_value = 3}, as Envoy sends them.
    header_map = b"".join(field(1, field(1, k.encode()) + field(3, v.encode()))
                          for k, v in headers)
    http_headers = field(1, header_map)  # end_of_stream false: left out
    message = field(2, http_headers)
    return b"\x00" + len(message).to_bytes(4, "big") + message  # gRPC length prefix


# ---------------------------------------------------------------- /proc

def rss(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM", "Threads"):
                parts = value.split()
                out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


# ---------------------------------------------------------------- HTTP/2

class Conn:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setblocking(False)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(1 << 30)  # we never hold back the replies
        self.out = bytearray(self.h2.data_to_send())
        self.settings_acked = False  # the processor's SETTINGS arrived
        self.own_settings_acked = False  # ... and its ACK of ours
        self.replies = {}  # stream id -> bytes of the reply so far
        self.answered = set()
        self.ended = set()  # streams the processor ended or reset: not expected
        self.reset_by_us = set()

    def flush(self):
        self.out += self.h2.data_to_send()
        while self.out:
            try:
                sent = self.sock.send(self.out)
            except BlockingIOError:
                return False
            del self.out[:sent]
        return True

    def read(self):
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        if not data:
            raise ConnectionError("the processor closed a connection")
        for ev in self.h2.receive_data(data):
            if isinstance(ev, h2.events.RemoteSettingsChanged):
                self.settings_acked = True
            elif isinstance(ev, h2.events.SettingsAcknowledged):
                self.own_settings_acked = True
            elif isinstance(ev, h2.events.DataReceived):
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                buf = self.replies.get(ev.stream_id, b"") + ev.data
                self.replies[ev.stream_id] = buf
                if len(buf) >= 5 and len(buf) >= 5 + int.from_bytes(buf[1:5], "big"):
                    if buf[5:6] != b"\x0a":  # ProcessingResponse.request_headers (field 1)
                        raise ValueError(f"stream {ev.stream_id}: unexpected reply {buf[:32]!r}")
                    self.answered.add(ev.stream_id)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                if ev.stream_id not in self.reset_by_us:
                    self.ended.add(ev.stream_id)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                raise ConnectionError(f"GOAWAY from the processor: {ev}")

    def open_stream(self, i):
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [
            (":method", "POST"), (":scheme", "http"), (":path", PATH),
            (":authority", "127.0.0.1"), ("content-type", "application/grpc"), ("te", "trailers"),
        ])
        self.h2.send_data(sid, processing_request(i))  # no END_STREAM: the call goes on
        return sid


def ready(c, with_stream):
    """The handshake is done both ways and, with a stream, its reply arrived."""
    return c.settings_acked and c.own_settings_acked and (not with_stream or c.answered)


def idle_connection_burst(args, deadline):
    """Opens args.idle_connections connections, in batches the listen queue takes at once, each
    brought to ready() (and its stream reset, as Envoy does), then holds them all idle."""
    conns = []
    batch = 200
    while len(conns) < args.idle_connections:
        new = [Conn(args.port) for _ in range(min(batch, args.idle_connections - len(conns)))]
        pump(new, lambda: all(c.settings_acked for c in new), deadline, "SETTINGS")
        if args.conn_stream:
            for i, c in enumerate(new):
                c.open_stream(len(conns) + i)
        pump(new, lambda: all(ready(c, args.conn_stream) for c in new), deadline,
             "the connections' handshakes and replies")
        for c in new:
            for sid in c.answered:
                c.h2.reset_stream(sid, error_code=8)  # CANCEL, as Envoy ends its ext_proc streams
                c.reset_by_us.add(sid)
            c.flush()
        conns += new
    hold_until = time.monotonic() + args.hold
    pump(conns, lambda: time.monotonic() > hold_until, deadline + args.hold, "the hold")
    return conns


def pump(conns, until, deadline, what):
    sel = selectors.DefaultSelector()
    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ, c)
    try:
        while not until():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            pending = [c for c in conns if not c.flush()]
            for c in pending:
                sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
            for key, _ in sel.select(0.05):
                key.data.read()
            for c in pending:
                sel.modify(c.sock, selectors.EVENT_READ, c)
            for c in conns:
                c.flush()
    finally:
        sel.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--streams", type=int, default=10000)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--idle-connections", type=int, default=0,
                    help="connections opened and held idle first (0: skipped)")
    ap.add_argument("--no-conn-stream", dest="conn_stream", action="store_false",
                    help="the idle connections carry no stream before going idle")
    ap.add_argument("--hold", type=float, default=2.0, help="seconds to hold before reading RSS")
    ap.add_argument("--settle", type=float, default=2.5,
                    help="seconds after closing before reading RSS")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--json")
    args = ap.parse_args()
    deadline = time.monotonic() + args.timeout
    result = {"streams": args.streams, "connections": args.connections,
              "idle_connections": args.idle_connections, "conn_stream": args.conn_stream}

    time.sleep(0.5)
    result["idle"] = rss(args.pid)

    if args.idle_connections:
        t0 = time.monotonic()
        conns = idle_connection_burst(args, deadline)
        result["conns_open_seconds"] = round(time.monotonic() - t0, 2)
        result["conns_open"] = rss(args.pid)
        result["conns_ended_by_processor"] = sum(len(c.ended) for c in conns)
        for c in conns:
            c.sock.close()
        del conns
        time.sleep(args.settle)
        result["conns_closed"] = rss(args.pid)
        result["bytes_per_connection"] = round(
            (result["conns_open"]["VmRSS"] - result["idle"]["VmRSS"]) / args.idle_connections, 1)
        result["anon_bytes_per_connection"] = round(
            (result["conns_open"]["RssAnon"] - result["idle"]["RssAnon"]) / args.idle_connections,
            1)

    for rnd in (1, 2):  # round 2 shows whether round 1's memory is reused (no leak)
        sfx = "" if rnd == 1 else "_round2"
        conns = [Conn(args.port) for _ in range(args.connections)]
        pump(conns, lambda: all(c.settings_acked for c in conns), deadline, "SETTINGS")
        limit = min(c.h2.remote_settings.max_concurrent_streams for c in conns)
        per_conn = -(-args.streams // args.connections)
        if per_conn > limit:
            sys.exit(f"{per_conn} streams per connection, but the processor allows {limit}")
        time.sleep(0.5)
        if rnd == 1:
            result["connected"] = rss(args.pid)

        t0 = time.monotonic()
        opened = 0
        batch = 250
        while opened < args.streams:  # a batch per connection at a time, then the replies
            for c in conns:
                for _ in range(min(batch, args.streams - opened)):
                    c.open_stream(opened)
                    opened += 1
            total = opened
            pump(conns, lambda: sum(len(c.answered) for c in conns) >= total, deadline,
                 f"replies to {total} streams")
        result["open_seconds" + sfx] = round(time.monotonic() - t0, 2)

        hold_until = time.monotonic() + args.hold  # let the processor settle, keep reading
        pump(conns, lambda: time.monotonic() > hold_until, deadline + args.hold, "the hold")
        result["open" + sfx] = rss(args.pid)
        result["answered" + sfx] = sum(len(c.answered) for c in conns)
        result["ended_by_processor" + sfx] = sum(len(c.ended) for c in conns)

        for c in conns:
            c.sock.close()
        time.sleep(args.settle)
        result["closed" + sfx] = rss(args.pid)

    n = args.streams
    # Over the RSS just before the streams (their 4 connections set up): what the streams
    # themselves hold, whatever an earlier burst left in the allocator.
    result["bytes_per_stream"] = round(
        (result["open"]["VmRSS"] - result["connected"]["VmRSS"]) / n, 1)
    result["bytes_per_stream_over_idle"] = round(
        (result["open"]["VmRSS"] - result["idle"]["VmRSS"]) / n, 1)
    result["anon_bytes_per_stream"] = round(
        (result["open"]["RssAnon"] - result["connected"]["RssAnon"]) / n, 1)
    text = json.dumps(result, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)
    if result.get("conns_ended_by_processor"):
        sys.exit(f"{result['conns_ended_by_processor']} streams of the idle connections "
                 "were ended by the processor")
    for sfx in ("", "_round2"):
        if result["answered" + sfx] != n or result["ended_by_processor" + sfx]:
            sys.exit(f"{result['answered' + sfx]} of {n} streams answered, "
                     f"{result['ended_by_processor' + sfx]} ended by the processor")


if __name__ == "__main__":
    main()
