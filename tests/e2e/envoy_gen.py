"""Generates the Envoy configuration for tests/e2e/test_protocol_envoy.py.

One Envoy, one ProtocolExtProcService processor, the echo upstream, and one listener per
processing-mode variant (LISTENERS below): every listener has its own connection manager whose
ext_proc filter points at the same processor with that variant's processing mode. So each test
picks the body mode it needs by picking a listener's port, and one Envoy process serves them all.

Every listener also has:
  - request_attributes ["request.path"] (the processor reports it as x-test-attribute-path);
  - metadata_options.receiving_namespaces.untyped ["libextproc.test"] (the namespace the
    processor's x-test-metadata writes), so Envoy keeps that dynamic metadata;
  - HTTP/1 trailers enabled, downstream and upstream, so a client's trailers reach the
    processor and the echo;
  - a file access log, LOG_DIR/access-NAME.log, one line per request (ACCESS_LOG_FORMAT);
  - message_timeout 2s: large enough for a 5 MiB body under the sanitizers, small enough that a
    processor that never answers shows as a quick failure instead of a hung test;
  - x-request-id preserved from the client and returned on every response, so a test can find
    its own request in the processor's log and in the access log.

The output is JSON, which Envoy's YAML loader reads as YAML. Standard library only.
"""

import json

PROCESSOR_CLUSTER = "protocol"
UPSTREAM_CLUSTER = "upstream"
METADATA_NAMESPACE = "libextproc.test"
# Request id first, so a test finds its line by prefix; the rest are dynamic metadata values as
# Envoy formats them (a string bare, a Struct as JSON, "-" when absent).
ACCESS_LOG_FORMAT = ("rid=%REQ(X-REQUEST-ID)% status=%RESPONSE_CODE% "
                     "value=%DYNAMIC_METADATA(libextproc.test:value)% "
                     "nested=%DYNAMIC_METADATA(libextproc.test:nested)% "
                     "list=%DYNAMIC_METADATA(libextproc.test:list)%\n")
MIB = 1024 * 1024
TYPES = "type.googleapis.com/envoy.extensions."
EXT_PROC = TYPES + "filters.http.ext_proc.v3.ExternalProcessor"
HCM = TYPES + "filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = TYPES + "filters.http.router.v3.Router"
FILE_LOG = TYPES + "access_loggers.file.v3.FileAccessLog"
HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_OPTIONS = TYPES + "upstreams.http.v3.HttpProtocolOptions"

# (request body mode, response body mode) overrides the STREAMED tests ask of a BUFFERED filter.
STREAMED_OVERRIDES = [("STREAMED", "STREAMED"), ("STREAMED", "BUFFERED"), ("BUFFERED", "STREAMED")]


def _allowed(request_body, response_body, headers="SEND", trailers="SKIP"):
    """An allowed_override_modes entry; headers or trailers None leaves those modes DEFAULT."""
    entry = {"request_body_mode": request_body, "response_body_mode": response_body}
    if headers:
        entry.update(request_header_mode=headers, response_header_mode=headers)
    if headers and trailers:
        entry.update(request_trailer_mode=trailers, response_trailer_mode=trailers)
    return entry


# name -> processing mode (request and response body modes are the same) and options.
#   trailers   SEND or SKIP, for both directions
#   allow      failure_mode_allow
#   buffer     the listener's per_connection_buffer_limit_bytes (None: Envoy's default, 1 MiB)
#   headers    header modes written in processing_mode, both directions (default SEND; None:
#              left DEFAULT); trailers None likewise leaves the trailer modes DEFAULT
#   override   allow_mode_override, with message_timeout 0.3s and max_message_timeout 10s
#              (unless timeouts is False)
#   allowed    allow_mode_override with this allowed_override_modes list
LISTENERS = {
    "buffered": dict(body="BUFFERED", trailers="SKIP", allow=False, buffer=8 * MIB),
    "partial": dict(body="BUFFERED_PARTIAL", trailers="SKIP", allow=False, buffer=None),
    "streamed": dict(body="STREAMED", trailers="SKIP", allow=False, buffer=None),
    # Envoy 1.40 rejects FULL_DUPLEX_STREAMED unless the trailer mode is SEND.
    "duplex": dict(body="FULL_DUPLEX_STREAMED", trailers="SEND", allow=False, buffer=None),
    "none": dict(body="NONE", trailers="SKIP", allow=False, buffer=None),
    # Trailers SEND while clients send none: nothing may wait for them.
    "trailers_none": dict(body="NONE", trailers="SEND", allow=False, buffer=None),
    "trailers_buffered": dict(body="BUFFERED", trailers="SEND", allow=False, buffer=None),
    "trailers_streamed": dict(body="STREAMED", trailers="SEND", allow=False, buffer=None),
    # failure_mode_allow true: a failed processor stream lets the request through unprocessed.
    "allow": dict(body="NONE", trailers="SKIP", allow=True, buffer=None),
    # allow_mode_override, and a short message_timeout that override_message_timeout may extend
    # up to max_message_timeout.
    "override": dict(body="NONE", trailers="SKIP", allow=False, buffer=None, override=True),
    # allow_mode_override with an allowed_override_modes list (`allowed`, ProcessingMode dicts),
    # for a processor asking for STREAMED bodies on a BUFFERED filter. Envoy grants an override
    # only when it equals an entry on every field but request_header_mode, after filling the
    # override's DEFAULT header and trailer modes from the filter's processing_mode as written.
    # Lacks STREAMED: every such override is refused.
    "allowed_lacks": dict(body="BUFFERED", trailers="SKIP", allow=False, buffer=None,
                          allowed=[_allowed("BUFFERED", "NONE")]),
    # Has STREAMED for either direction or both, written as the filter's mode is: granted.
    "allowed_has": dict(body="BUFFERED", trailers="SKIP", allow=False, buffer=None,
                        allowed=[_allowed(*m) for m in STREAMED_OVERRIDES]),
    # The same entries with their header and trailer modes left DEFAULT, which means the same
    # as the filter's SEND and SKIP but is compared as written: refused.
    "allowed_differs": dict(body="BUFFERED", trailers="SKIP", allow=False, buffer=None,
                            allowed=[_allowed(*m, headers=None) for m in STREAMED_OVERRIDES]),
    # The other way round: the filter's header and trailer modes left DEFAULT, the entries
    # written SEND and SKIP: refused too.
    "allowed_differs_static": dict(body="BUFFERED", trailers=None, allow=False, buffer=None,
                                   headers=None,
                                   allowed=[_allowed(*m) for m in STREAMED_OVERRIDES]),
    # A STREAMED filter whose processor asks for BUFFERED: granted (no list: any mode).
    "streamed_to_buffered": dict(body="STREAMED", trailers="SKIP", allow=False, buffer=None,
                                 override=True, timeouts=False),
}


def _endpoints(cluster, address):
    return {"cluster_name": cluster, "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": _socket(address)}}]}]}


def _socket(address):
    kind, where = address
    if kind == "unix":
        return {"pipe": {"path": where}}
    return {"socket_address": {"address": "127.0.0.1", "port_value": where}}


def _ext_proc_filter(name, mode):
    short_timeout = mode.get("override") and mode.get("timeouts", True)
    processing_mode = {"request_body_mode": mode["body"], "response_body_mode": mode["body"]}
    headers = mode.get("headers", "SEND")
    if headers:
        processing_mode.update(request_header_mode=headers, response_header_mode=headers)
    if mode["trailers"]:
        processing_mode.update(request_trailer_mode=mode["trailers"],
                               response_trailer_mode=mode["trailers"])
    config = {
        "@type": EXT_PROC,
        "grpc_service": {"envoy_grpc": {"cluster_name": PROCESSOR_CLUSTER}},
        "stat_prefix": name,
        "failure_mode_allow": mode["allow"],
        "message_timeout": "0.3s" if short_timeout else "2s",
        "max_message_timeout": "10s" if short_timeout else "0s",
        "allow_mode_override": bool(mode.get("override") or mode.get("allowed")),
        "processing_mode": processing_mode,
        "request_attributes": ["request.path"],
        "metadata_options": {"receiving_namespaces": {"untyped": [METADATA_NAMESPACE]}},
    }
    if mode.get("allowed"):
        config["allowed_override_modes"] = mode["allowed"]
    return {"name": "envoy.filters.http.ext_proc", "typed_config": config}


def _listener(name, mode, port, log_dir):
    listener = {
        "name": name,
        "address": _socket(("tcp", port)),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM,
                "stat_prefix": name,
                "preserve_external_request_id": True,
                # HTTP/1 trailers are dropped unless enabled (here and on the upstream cluster).
                "http_protocol_options": {"enable_trailers": True},
                "always_set_request_id_in_response": True,
                "access_log": [{
                    "name": "envoy.access_loggers.file",
                    "typed_config": {
                        "@type": FILE_LOG,
                        "path": f"{log_dir}/access-{name}.log",
                        "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
                    },
                }],
                "route_config": {
                    "name": "local_route",
                    "virtual_hosts": [{
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"},
                                    "route": {"cluster": UPSTREAM_CLUSTER, "timeout": "20s"}}],
                    }],
                },
                "http_filters": [
                    _ext_proc_filter(name, mode),
                    {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
                ],
            },
        }]}],
    }
    if mode["buffer"] is not None:
        listener["per_connection_buffer_limit_bytes"] = mode["buffer"]
    return listener


def config(ports, admin_port, echo_port, processor, log_dir, listeners=None):
    """The configuration's text.

    ports maps each LISTENERS name (or each of `listeners`, a subset of them) to its listener
    port; processor is ("tcp", port) or ("unix", path); access logs go to log_dir.
    """
    chosen = {n: LISTENERS[n] for n in (listeners or LISTENERS)}
    assert set(ports) == set(chosen), sorted(ports)
    doc = {
        "admin": {"address": _socket(("tcp", admin_port))},
        "static_resources": {
            "listeners": [_listener(n, m, ports[n], log_dir) for n, m in chosen.items()],
            "clusters": [
                {
                    "name": UPSTREAM_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        HTTP_OPTIONS_KEY: {
                            "@type": HTTP_OPTIONS,
                            "explicit_http_config": {
                                "http_protocol_options": {"enable_trailers": True}},
                        },
                    },
                    "load_assignment": _endpoints(UPSTREAM_CLUSTER, ("tcp", echo_port)),
                },
                {
                    # gRPC needs HTTP/2: cleartext (h2c) on loopback.
                    "name": PROCESSOR_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        HTTP_OPTIONS_KEY: {
                            "@type": HTTP_OPTIONS,
                            "explicit_http_config": {"http2_protocol_options": {}},
                        },
                    },
                    "load_assignment": _endpoints(PROCESSOR_CLUSTER, processor),
                },
            ],
        },
    }
    return json.dumps(doc, indent=2) + "\n"
