#!/usr/bin/env python3
"""HTTP/1.1 echo upstream for the libextproc demo and Envoy-in-the-loop tests.

Every request, whatever its method, gets `200 OK` with a JSON body describing what arrived:

    {"method": "POST", "path": "/hello?x=1",
     "headers": {"host": "...", "x-request-id": "...", ...},
     "body": "...", "message": "echo"}

- `headers` is a dict keyed by lower-cased header name. A header that arrives more than once
  has its values joined with ", " (the HTTP list syntax), so every value is a plain string and
  tests can compare without caring about repetition.
- `body` is the request body decoded as UTF-8 (undecodable bytes become U+FFFD). Bodies are
  read by Content-Length or by chunked transfer coding.
- `trailers` appears only when a chunked body ended with trailer fields: a dict like `headers`
  (so a test can see trailers a proxy forwarded, or added); without trailers the key is absent.
- `message` is always "echo", so a test can tell the echo answered and not something else.
- A request header `x-echo-response-chunks: N` (1 to 64) makes the answer use chunked transfer
  coding instead of Content-Length, the JSON split into N pieces of about equal size sent 50 ms
  apart, so that a proxy sees (and a test of streamed response bodies gets) N separate chunks.
- A request header `x-echo-response-sse: N` (1 to 64) makes the answer a server-sent event
  stream (`text/event-stream`, chunked): first `event: echo` whose `data` is the JSON above,
  then N-1 events `data: tick I`, one chunk each, 10 ms apart, as a streaming API would send.
- A request header `x-echo-response-headers: NAME=VALUE;NAME=VALUE...` adds those headers to
  the answer, in order (a name given twice is sent twice), so a test can give a processor
  response headers to set, append to, keep or remove.

Keep-alive is on (HTTP/1.1 semantics; Envoy pools upstream connections), each connection is
served by its own thread, and nothing is remembered between requests.

Usage: echo_upstream.py [--host 127.0.0.1] [--port 8000] [--verbose]
Port 0 picks a free port; the chosen address is printed on the first line of stdout.
SIGINT and SIGTERM stop the server and exit 0. Python standard library only.
"""

import argparse
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MESSAGE = "echo"


class EchoHandler(BaseHTTPRequestHandler):
    # HTTP/1.1 so connections stay open between requests (HTTP/1.0 would close each one).
    protocol_version = "HTTP/1.1"
    verbose = False

    def __getattr__(self, name):
        # BaseHTTPRequestHandler dispatches method FOO to do_FOO; answering every do_* name
        # makes the server echo any method, including ones invented by a test.
        if name.startswith("do_"):
            return self._echo
        raise AttributeError(name)

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self):
        parts = []
        while True:
            size_line = self.rfile.readline(65537)
            if not size_line:
                raise ConnectionError("connection closed inside a chunked body")
            size = int(size_line.split(b";", 1)[0].strip(), 16)  # drop chunk extensions
            if size == 0:
                break
            parts.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after each chunk
        # Trailer fields (if any) end with an empty line.
        while (line := self.rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            key, value = name.strip().lower(), value.strip()
            self.trailers[key] = f"{self.trailers[key]}, {value}" if key in self.trailers else value
        return b"".join(parts)

    def _echo(self):
        self.trailers = {}
        try:
            body = self._read_body()
        except (ValueError, ConnectionError):
            self.send_error(400, "bad request body")
            self.close_connection = True
            return
        headers = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        doc = {
            "method": self.command,
            "path": self.path,
            "headers": headers,
            "body": body.decode("utf-8", errors="replace"),
            "message": MESSAGE,
        }
        if self.trailers:
            doc["trailers"] = self.trailers
        payload = json.dumps(doc).encode()
        events = self._count_header("x-echo-response-sse")
        if events:
            self._send_events(payload, events)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        for item in filter(None, self.headers.get("x-echo-response-headers", "").split(";")):
            name, _, value = item.partition("=")
            self.send_header(name.strip(), value.strip())
        chunks = self._response_chunks()
        if chunks:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command == "HEAD":  # HEAD gets the length but never a body
            return
        if not chunks:
            self.wfile.write(payload)
            return
        step = -(-len(payload) // chunks)  # ceiling division: at most `chunks` pieces
        for start in range(0, len(payload), step):
            piece = payload[start:start + step]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
            time.sleep(0.05)
        self.wfile.write(b"0\r\n\r\n")

    def _send_events(self, payload, events):
        """The echo as the first of `events` server-sent events, each its own chunk."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.command == "HEAD":
            return
        pieces = [b"event: echo\ndata: " + payload + b"\n\n"]
        pieces += [b"data: tick %d\n\n" % i for i in range(1, events)]
        for i, piece in enumerate(pieces):
            if i:
                time.sleep(0.01)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def _count_header(self, name):
        """N from header `name` (1..64), else 0."""
        try:
            n = int(self.headers.get(name, "0"))
        except ValueError:
            return 0
        return n if 1 <= n <= 64 else 0

    def _response_chunks(self):
        """N from x-echo-response-chunks (1..64), else 0: answer with Content-Length."""
        return self._count_header("x-echo-response-chunks")

    def log_message(self, format, *args):
        # Access logs are off by default: a 500-request test would bury useful output.
        if self.verbose:
            super().log_message(format, *args)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args()

    EchoHandler.verbose = args.verbose
    # ThreadingHTTPServer uses daemon threads, so idle keep-alive connections never block exit.
    # Its listen backlog of 5 would drop Envoy's connections under load (a 503 for the client).
    ThreadingHTTPServer.request_queue_size = 1024
    server = ThreadingHTTPServer((args.host, args.port), EchoHandler)
    host, port = server.server_address[:2]
    print(f"echo_upstream listening on {host}:{port}", flush=True)

    # serve_forever() runs in a thread; the main thread only waits for a signal. shutdown()
    # must not be called from the thread running serve_forever(), or it deadlocks.
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = threading.Thread(target=server.serve_forever, name="echo-accept", daemon=True)
    worker.start()
    stop.wait()
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
