// Command grpc-go-extproc is a "foreign" ext_proc server for extproc-test: written directly on
// grpc-go and go-control-plane, sharing no code with libextproc. By default it is a correct
// processor for every phase; a request header `x-misbehave` picks, per stream, one way of
// answering that Envoy 1.40 rejects or mishandles, so the tool's judgments can be checked against
// a server that is not ours.
//
// Default behaviour, per phase:
//
//	request_headers   CONTINUE, setting x-grpc-go: 1 (raw_value)
//	response_headers  CONTINUE
//	bodies            NONE/BUFFERED/BUFFERED_PARTIAL/STREAMED: CONTINUE;
//	                  FULL_DUPLEX_STREAMED: each chunk echoed back as a streamed_response,
//	                  end_of_stream when the chunk had it
//	trailers          CONTINUE
//
// The body mode is read from the protocol_config Envoy sends on a stream's first message.
//
// x-misbehave (read on request_headers, remembered for the rest of the stream):
//
//	value-only   request_headers also sets x-foreign with HeaderValue.value only
//	             (value "value-only", raw_value empty)
//	both         request_headers also sets x-foreign with both value and raw_value
//	             (value "both-value", raw_value "both-raw": which one Envoy used shows)
//	spurious     request_headers is answered with a request_body response
//	late         request_headers is answered after 400 ms
//	nested       request_headers is answered with dynamic_metadata nested 3000 Structs deep
//	nul-name     request_headers also sets a header whose name holds a NUL byte
//	grpc-error   the stream ends with INTERNAL instead of answering request_headers
//	close        the stream ends with OK instead of answering request_headers
//	pseudo       request_headers also sets :authority and host to changed.example,
//	             and x-foreign: kept
//	stale-cl     a BUFFERED request body is replaced by "replaced" (8 bytes), the
//	             content-length header left as it was
//	no-eos       FULL_DUPLEX_STREAMED request body chunks are echoed, never with end_of_stream
//
// Usage: grpc-go-extproc [--addr 127.0.0.1:50061] [--verbose]
// The first line on stdout is "listening on ADDR". SIGINT and SIGTERM stop it.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

const misbehaveHeader = "x-misbehave"

type processor struct {
	extprocv3.UnimplementedExternalProcessorServer
	verbose bool
}

// stream is what one Process call remembers between messages.
type stream struct {
	misbehave    string
	requestMode  filterv3.ProcessingMode_BodySendMode
	responseMode filterv3.ProcessingMode_BodySendMode
}

// errEnd ends a stream with the wrapped status (OK included) without a reply.
type errEnd struct{ err error }

func (e errEnd) Error() string { return fmt.Sprintf("end stream: %v", e.err) }

func (p *processor) Process(srv extprocv3.ExternalProcessor_ProcessServer) error {
	st := &stream{}
	first := true
	for {
		req, err := srv.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err // cancelled or reset by Envoy: nothing left to answer
		}
		if first {
			first = false
			if pc := req.GetProtocolConfig(); pc != nil {
				st.requestMode = pc.GetRequestBodyMode()
				st.responseMode = pc.GetResponseBodyMode()
			}
		}
		resp, err := st.answer(req)
		if p.verbose {
			log.Printf("misbehave=%q request=%T reply=%T err=%v",
				st.misbehave, req.GetRequest(), resp.GetResponse(), err)
		}
		var end errEnd
		if errors.As(err, &end) {
			return end.err
		}
		if err != nil {
			return err
		}
		if resp == nil {
			continue // e.g. a flow-control-only message: nothing to answer
		}
		if err := srv.Send(resp); err != nil {
			return err
		}
	}
}

// answer builds the reply to one message; nil with a nil error means no reply.
func (st *stream) answer(req *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error) {
	switch r := req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		st.misbehave = headerValue(r.RequestHeaders.GetHeaders(), misbehaveHeader)
		return st.requestHeaders()
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{
			ResponseHeaders: &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{}},
		}}, nil
	case *extprocv3.ProcessingRequest_RequestBody:
		body := st.body(r.RequestBody, st.requestMode, true)
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{
			RequestBody: body,
		}}, nil
	case *extprocv3.ProcessingRequest_ResponseBody:
		body := st.body(r.ResponseBody, st.responseMode, false)
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{
			ResponseBody: body,
		}}, nil
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{
			RequestTrailers: &extprocv3.TrailersResponse{},
		}}, nil
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{
			ResponseTrailers: &extprocv3.TrailersResponse{},
		}}, nil
	}
	return nil, nil
}

// nestedStruct is {"n": {"n": ... {}}}, `depth` Structs deep: small on the wire, but a decoder
// without a recursion limit follows it all the way down.
func nestedStruct(depth int) *structpb.Struct {
	s := &structpb.Struct{}
	for i := 0; i < depth; i++ {
		s = &structpb.Struct{Fields: map[string]*structpb.Value{"n": structpb.NewStructValue(s)}}
	}
	return s
}

func (st *stream) requestHeaders() (*extprocv3.ProcessingResponse, error) {
	set := []*corev3.HeaderValueOption{rawHeader("x-grpc-go", "1")}
	switch st.misbehave {
	case "value-only":
		set = append(set, &corev3.HeaderValueOption{
			Header: &corev3.HeaderValue{Key: "x-foreign", Value: "value-only"}})
	case "both":
		set = append(set, &corev3.HeaderValueOption{
			Header: &corev3.HeaderValue{Key: "x-foreign", Value: "both-value", RawValue: []byte("both-raw")}})
	case "nul-name":
		set = append(set, rawHeader("x-bad\x00name", "v"))
	case "pseudo":
		set = append(set, rawHeader(":authority", "changed.example"),
			rawHeader("host", "changed.example"), rawHeader("x-foreign", "kept"))
	case "spurious":
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{
			RequestBody: &extprocv3.BodyResponse{Response: &extprocv3.CommonResponse{}},
		}}, nil
	case "late":
		time.Sleep(400 * time.Millisecond)
	case "nested":
		return &extprocv3.ProcessingResponse{
			Response: &extprocv3.ProcessingResponse_RequestHeaders{
				RequestHeaders: &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{}}},
			DynamicMetadata: nestedStruct(3000),
		}, nil
	case "grpc-error":
		return nil, errEnd{status.Error(codes.Internal, "x-misbehave: grpc-error")}
	case "close":
		return nil, errEnd{nil}
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{
		RequestHeaders: &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{
			HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: set},
		}},
	}}, nil
}

// body answers one body message in the given mode; request tells the directions apart.
func (st *stream) body(b *extprocv3.HttpBody, mode filterv3.ProcessingMode_BodySendMode,
	request bool) *extprocv3.BodyResponse {
	common := &extprocv3.CommonResponse{}
	switch {
	case mode == filterv3.ProcessingMode_FULL_DUPLEX_STREAMED:
		eos := b.GetEndOfStream()
		if request && st.misbehave == "no-eos" {
			eos = false
		}
		common.BodyMutation = &extprocv3.BodyMutation{
			Mutation: &extprocv3.BodyMutation_StreamedResponse{
				StreamedResponse: &extprocv3.StreamedBodyResponse{Body: b.GetBody(), EndOfStream: eos},
			},
		}
	case mode == filterv3.ProcessingMode_BUFFERED && request && st.misbehave == "stale-cl":
		common.BodyMutation = &extprocv3.BodyMutation{
			Mutation: &extprocv3.BodyMutation_Body{Body: []byte("replaced")},
		}
	}
	return &extprocv3.BodyResponse{Response: common}
}

func rawHeader(key, value string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: key, RawValue: []byte(value)}}
}

// headerValue is a header's value as Envoy sends it (raw_value; value from older senders).
func headerValue(headers *corev3.HeaderMap, name string) string {
	for _, h := range headers.GetHeaders() {
		if strings.EqualFold(h.GetKey(), name) {
			if len(h.GetRawValue()) > 0 {
				return string(h.GetRawValue())
			}
			return h.GetValue()
		}
	}
	return ""
}

func main() {
	addr := flag.String("addr", "127.0.0.1:50061", "address to listen on (host:port)")
	verbose := flag.Bool("verbose", false, "log every message and reply to stderr")
	flag.Parse()

	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("listen %s: %v", *addr, err)
	}
	server := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(server, &processor{verbose: *verbose})
	fmt.Printf("listening on %s\n", lis.Addr())

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-signals
		server.Stop()
	}()
	if err := server.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		log.Fatalf("serve: %v", err)
	}
}
