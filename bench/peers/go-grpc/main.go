// Benchmark peer "go-grpc": a trivial ext_proc processor written directly on grpc-go and the
// Envoy API types from go-control-plane, with no SDK in between. Both Go SDKs
// (github.com/wrossmorrow/envoy-extproc-sdk-go, github.com/getyourguide/extproc-go) sit on these
// same two modules, so measured beside them it shows what each SDK adds.
//
// Usage: go-grpc-peer PORT   (listens on 127.0.0.1:PORT, cleartext HTTP/2, until SIGINT/SIGTERM)
//
// Trivial processor: on request headers, set x-extra-request-id to the request's x-request-id;
// on response headers, set it again (same value). Values are read from raw_value (what Envoy
// 1.40 sends), falling back to value, and written as raw_value. Any other phase (bodies,
// trailers) gets an empty reply of its own type, so other processing modes work too.
package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

const extraRequestID = "x-extra-request-id"

type trivial struct {
	extprocv3.UnimplementedExternalProcessorServer
}

func headerValue(headers *extprocv3.HttpHeaders, name string) string {
	for _, h := range headers.GetHeaders().GetHeaders() {
		if h.GetKey() == name {
			if raw := h.GetRawValue(); len(raw) > 0 {
				return string(raw)
			}
			return h.GetValue()
		}
	}
	return ""
}

func setExtraID(id string) *extprocv3.HeadersResponse {
	return &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{
		HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{
			Header: &corev3.HeaderValue{Key: extraRequestID, RawValue: []byte(id)},
		}}},
	}}
}

func (trivial) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	requestID := "" // one stream is one HTTP request: remembered from its request headers
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		resp := &extprocv3.ProcessingResponse{}
		switch r := req.GetRequest().(type) {
		case *extprocv3.ProcessingRequest_RequestHeaders:
			requestID = headerValue(r.RequestHeaders, "x-request-id")
			resp.Response = &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: setExtraID(requestID)}
		case *extprocv3.ProcessingRequest_ResponseHeaders:
			resp.Response = &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: setExtraID(requestID)}
		case *extprocv3.ProcessingRequest_RequestBody:
			resp.Response = &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}
		case *extprocv3.ProcessingRequest_ResponseBody:
			resp.Response = &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}
		case *extprocv3.ProcessingRequest_RequestTrailers:
			resp.Response = &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}
		case *extprocv3.ProcessingRequest_ResponseTrailers:
			resp.Response = &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}
		default:
			continue // nothing this processor knows how to answer
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go-grpc-peer PORT")
		os.Exit(2)
	}
	port, err := strconv.Atoi(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "go-grpc-peer: bad port:", os.Args[1])
		os.Exit(2)
	}
	lis, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "go-grpc-peer:", err)
		os.Exit(1)
	}
	srv := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(srv, trivial{})
	healthpb.RegisterHealthServer(srv, health.NewServer())

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		srv.Stop()
	}()
	fmt.Printf("go-grpc peer (grpc-go, no SDK) listening on %s\n", lis.Addr())
	if err := srv.Serve(lis); err != nil {
		fmt.Fprintln(os.Stderr, "go-grpc-peer:", err)
		os.Exit(1)
	}
}
