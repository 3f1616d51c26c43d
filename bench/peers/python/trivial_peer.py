"""Benchmark peer: the Python SDK (envoy-extproc-sdk 0.1.1) serving its trivial processor.

Usage: trivial_peer.py PORT     (listens on 127.0.0.1:PORT, cleartext HTTP/2, until SIGINT/SIGTERM)

TrivialExtProcService is the SDK's own first example (examples/trivial.py in its repository, which
the wheel does not ship): copy x-request-id into x-extra-request-id on the request headers and on
the response headers. It is written here the way SDK 0.1.1 calls handlers: with a CommonResponse
(the upstream example's `response.response` dates from another version of the base class and
raises AttributeError against 0.1.1's).

Quirk kept as is (it is the SDK's behaviour): the SDK reads HeaderValue.value only. Envoy 1.40
sends header values in raw_value (bytes) with value empty, so `request["__id"]` is "" and the
processor sets x-extra-request-id to an empty value. The replies are still of the right type
(HeadersResponse in each phase), plus the SDK's own x-ext-procs-applied header on responses.

Serving: the same as the SDK's create_server() (grpc.aio server, the ext_proc servicer and the
SDK's health servicer), except the address: create_server() binds [::]:PORT, this binds
127.0.0.1:PORT. The health servicer is registered as an instance (the SDK passes the class).
"""

import asyncio
import logging
import os
import signal
import sys
from typing import Dict

from grpc import ServicerContext
from grpc.aio import server as grpc_aio_server

from envoy_extproc_sdk import BaseExtProcService, ext_api
from envoy_extproc_sdk.health import HealthService, add_HealthServicer_to_server
from envoy_extproc_sdk.util.envoy import add_ExternalProcessorServicer_to_server

EXTRA_REQUEST_ID_HEADER = "x-extra-request-id"


class TrivialExtProcService(BaseExtProcService):
    def process_request_headers(
        self,
        headers: ext_api.HttpHeaders,
        context: ServicerContext,
        request: Dict,
        response: ext_api.CommonResponse,
    ) -> ext_api.CommonResponse:
        self.add_header(response, EXTRA_REQUEST_ID_HEADER, request["__id"])
        return response

    def process_response_headers(
        self,
        headers: ext_api.HttpHeaders,
        context: ServicerContext,
        request: Dict,
        response: ext_api.CommonResponse,
    ) -> ext_api.CommonResponse:
        self.add_header(response, EXTRA_REQUEST_ID_HEADER, request["__id"])
        return response


async def serve(port: int) -> None:
    server = grpc_aio_server()
    add_ExternalProcessorServicer_to_server(TrivialExtProcService(), server)
    add_HealthServicer_to_server(HealthService(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if bound == 0:
        raise SystemExit(f"trivial_peer: cannot listen on 127.0.0.1:{port}")
    await server.start()
    print(f"python peer (envoy-extproc-sdk 0.1.1) listening on 127.0.0.1:{bound}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.splitlines()[2])
    level = os.environ.get("LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(level=level, format="%(asctime)s : %(levelname)s : %(message)s")
    asyncio.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
