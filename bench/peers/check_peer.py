"""Send one real ext_proc exchange to a benchmark peer and show what it answered.

Usage: check_peer.py PORT [--value]

Opens one envoy.service.ext_proc.v3.ExternalProcessor/Process stream on 127.0.0.1:PORT (cleartext
HTTP/2), sends request_headers then response_headers, as Envoy 1.40 does (header values in
raw_value; with --value, in the old string field `value` instead), and prints each reply's type,
encoded size and header mutations. Exits 0 when both replies have the right type, 1 otherwise. The
x-extra-request-id it reports is informational (the Python SDK reads `value` only).

Runs in build/bench-peers/python-venv (grpcio + xds-protos); bench/peers/check.sh calls it.
"""

import sys

import grpc
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3.external_processor_pb2_grpc import ExternalProcessorStub

REQUEST_ID = "check-peer-0123456789"


def header(key, value, use_value):
    if use_value:
        return HeaderValue(key=key, value=value)
    return HeaderValue(key=key, raw_value=value.encode())


def exchange(port, use_value):
    req_headers = [(":method", "GET"), (":path", "/check"), (":authority", "localhost"),
                   (":scheme", "http"), ("x-request-id", REQUEST_ID)]
    resp_headers = [(":status", "200"), ("content-type", "text/plain")]
    messages = [
        ep.ProcessingRequest(request_headers=ep.HttpHeaders(
            headers=HeaderMap(headers=[header(k, v, use_value) for k, v in req_headers]),
            end_of_stream=True)),
        ep.ProcessingRequest(response_headers=ep.HttpHeaders(
            headers=HeaderMap(headers=[header(k, v, use_value) for k, v in resp_headers]),
            end_of_stream=False)),
    ]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        stub = ExternalProcessorStub(channel)
        replies = list(stub.Process(iter(messages), timeout=10))
    return replies


def main():
    args = sys.argv[1:]
    use_value = "--value" in args
    args = [a for a in args if a != "--value"]
    if len(args) != 1:
        raise SystemExit(__doc__.splitlines()[2])
    replies = exchange(int(args[0]), use_value)
    ok = len(replies) == 2
    for want, reply in zip(("request_headers", "response_headers"), replies):
        got = reply.WhichOneof("response")
        ok = ok and got == want
        mutation = getattr(reply, got).response.header_mutation if got == want else None
        sets = []
        for option in (mutation.set_headers if mutation else []):
            h = option.header
            sets.append(f"{h.key}={h.raw_value.decode(errors='replace') or h.value!r}"
                        f" ({'raw_value' if h.raw_value else 'value'})")
        print(f"  {want}: reply {got} ({reply.ByteSize()} B); "
              f"set_headers: {', '.join(sets) or 'none'}")
    print(f"  sent values in {'value' if use_value else 'raw_value'}; "
          f"{len(replies)} replies; {'OK' if ok else 'WRONG'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
