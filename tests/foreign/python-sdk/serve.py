#!/usr/bin/env python3
"""A foreign ext_proc server for extproc-test: the Python SDK this project started from.

Serves a trivial processor built on PyPI's `envoy-extproc-sdk` (0.1.1, pinned with everything
else in requirements.txt), as that SDK's README describes its "trivial" example: the request's
`x-request-id` is copied to the upstream request and back to the client as `x-extra-request-id`.
The SDK itself adds its `x-ext-procs-applied` header (the processor's name) to response headers.
Everything is done with the SDK's own code: its BaseExtProcService runs the stream, its
`add_header` writes the header mutations, and it reads headers with its `get_header`.

What to expect of this server (the reason it is here): the SDK writes every header it sets as
`HeaderValue(key=..., value=...)`, never `raw_value`, and reads request headers from `value`,
while Envoy (1.40) sends `raw_value` only. So the SDK sees an empty `x-request-id`, and every
header it sets reaches Envoy with `value` set and `raw_value` empty.

The example itself ships only in the SDK's source repository, not in the wheel; the processor
below is written here, on the SDK's base class and helpers.

Shims, because the 2022 SDK does not import as published with today's packages:
  - `grpc_health_check.v1.health_pb2{,_grpc}`: the SDK imports gRPC's health protos from a
    package it generated for itself and never published; the same modules come from
    grpcio-health-checking as `grpc_health.v1`, and are aliased under the SDK's name below.
  - ddtrace: the SDK imports `ddtrace.Span` and `ddtrace.filters`, which ddtrace 3 removed, so
    requirements.txt pins ddtrace 2.x; tracing is turned off (DD_TRACE_ENABLED=false, unless the
    environment says otherwise) so nothing tries to reach a Datadog agent.
  - The SDK's `serve()`/`create_server()` bind `[::]:PORT`; this script builds the same grpc.aio
    server (the SDK's servicer and health service) but binds 127.0.0.1 only.

Usage: serve.py --port PORT [--grace SECONDS] [--verbose]
Port 0 picks a free port. The first line on stdout is "listening on 127.0.0.1:PORT".
SIGINT and SIGTERM stop the server (exit 0). Run it with .venv-foreign-python/bin/python.
"""

import argparse
import asyncio
import logging
import os
import signal
import sys
import types

for _name, _value in (("DD_TRACE_ENABLED", "false"),
                      ("DD_INSTRUMENTATION_TELEMETRY_ENABLED", "false"),
                      ("DD_REMOTE_CONFIGURATION_ENABLED", "false")):
    os.environ.setdefault(_name, _value)


def _alias_health_protos():
    """Makes `grpc_health_check.v1.health_pb2{,_grpc}` importable (see the module's docstring)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    package = types.ModuleType("grpc_health_check")
    v1 = types.ModuleType("grpc_health_check.v1")
    package.__path__, v1.__path__ = [], []
    package.v1 = v1
    v1.health_pb2, v1.health_pb2_grpc = health_pb2, health_pb2_grpc
    sys.modules.update({
        "grpc_health_check": package,
        "grpc_health_check.v1": v1,
        "grpc_health_check.v1.health_pb2": health_pb2,
        "grpc_health_check.v1.health_pb2_grpc": health_pb2_grpc,
    })


_alias_health_protos()

import grpc  # noqa: E402

from envoy_extproc_sdk import BaseExtProcService  # noqa: E402
from envoy_extproc_sdk.health import HealthService, add_HealthServicer_to_server  # noqa: E402
from envoy_extproc_sdk.util.envoy import add_ExternalProcessorServicer_to_server  # noqa: E402

EXTRA_ID_HEADER = "x-extra-request-id"


class TrivialExtProcService(BaseExtProcService):
    """The SDK's trivial example: x-request-id comes back as x-extra-request-id, both ways.

    `request["__id"]` is the x-request-id the SDK's base class read from the request headers."""

    async def process_request_headers(self, headers, context, request, response):
        return self.add_header(response, EXTRA_ID_HEADER, request["__id"])

    async def process_response_headers(self, headers, context, request, response):
        return self.add_header(response, EXTRA_ID_HEADER, request["__id"])


async def serve(port, grace):
    server = grpc.aio.server()
    add_ExternalProcessorServicer_to_server(TrivialExtProcService(), server)
    add_HealthServicer_to_server(HealthService(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if not bound:
        raise SystemExit(f"serve.py: cannot listen on 127.0.0.1:{port}")
    await server.start()
    print(f"listening on 127.0.0.1:{bound}", flush=True)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await server.stop(grace)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1 (0: any)")
    parser.add_argument("--grace", type=float, default=1.0,
                        help="seconds streams may finish in on shutdown")
    parser.add_argument("--verbose", action="store_true", help="the SDK's debug log on stderr")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.port, args.grace))


if __name__ == "__main__":
    main()
