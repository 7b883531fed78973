// Package sdk is what a refiners-go plugin is written with. A plugin is a
// separate program that plans patches: implement Planner and call Serve
// from main. The host launches the program, checks its checksum, talks to
// it over gRPC with mutual TLS, and does all tensor work itself. Plugins
// see plain Go values (PlanRequest, Plan, ...); the sdk speaks the protocol
// (package pluginproto) for them, and bad input is answered with Errorf.
//
//	func main() { sdk.Serve(myPlanner{}) }
package sdk

import (
	"context"
	"fmt"
	"os"
	"slices"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/refiners-go/refiners/pluginproto"
)

// ProtocolVersion is the plugin protocol this SDK speaks.
const ProtocolVersion = 1

// Handshake is shared by host and plugins. The cookie is not a secret: it
// only stops a plugin binary from being run by hand by mistake.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   "REFINERS_PLUGIN",
	MagicCookieValue: "9c1f4e2a-patch-planner",
}

// PluginName is the key of the plugin in go-plugin's plugin set.
const PluginName = "planner"

// Planner is what a plugin implements (and what the host calls).
type Planner interface {
	Describe(ctx context.Context) (*Description, error)
	Plan(ctx context.Context, req *PlanRequest) (*Plan, error)
}

// MaxMessage is the largest gRPC message either side accepts. Plans and
// headers are small; this only lifts gRPC's 4 MiB default for headers of
// very large files.
const MaxMessage = 64 << 20

// Log is the plugin's logger: it writes JSON to stderr, which the host
// re-levels into its own log under the plugin's name. Never print to
// stdout: it carries the handshake.
var Log hclog.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: os.Stderr, JSONFormat: true})

// Serve runs the plugin until the host stops it.
func Serve(p Planner) {
	logger := Log
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  Handshake,
		VersionedPlugins: map[int]plugin.PluginSet{ProtocolVersion: {PluginName: &GRPCPlugin{Impl: p}}},
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			return grpc.NewServer(append(opts, grpc.MaxRecvMsgSize(MaxMessage), grpc.MaxSendMsgSize(MaxMessage))...)
		},
		Logger: logger,
	})
}

// GRPCPlugin connects go-plugin to the Planner service on both sides.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl Planner // plugin side only
}

func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pb.RegisterPluginServer(s, &server{impl: p.Impl})
	return nil
}

func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &client{c: pb.NewPluginClient(c)}, nil
}

type server struct {
	pb.UnimplementedPluginServer
	impl Planner
}

func (s *server) Describe(ctx context.Context, req *pb.DescribeRequest) (*pb.Description, error) {
	d, err := s.impl.Describe(ctx)
	if err != nil {
		return nil, err
	}
	if d == nil {
		return nil, Error(Internal, "Describe returned no description")
	}
	return descriptionToProto(d)
}

func (s *server) Plan(ctx context.Context, req *pb.PlanRequest) (*pb.PlanResponse, error) {
	p, err := s.impl.Plan(ctx, requestFromProto(req))
	if err != nil {
		return nil, err
	}
	if p == nil {
		return nil, Error(Internal, "Plan returned no plan")
	}
	return planToProto(p)
}

// client is the host's view of a plugin: a Planner over gRPC. A message it
// cannot read is the plugin's fault: Internal.
type client struct{ c pb.PluginClient }

func (c *client) Describe(ctx context.Context) (*Description, error) {
	d, err := c.c.Describe(ctx, &pb.DescribeRequest{}, grpc.MaxCallRecvMsgSize(MaxMessage))
	if err != nil {
		return nil, err
	}
	return descriptionFromProto(d), nil
}

func (c *client) Plan(ctx context.Context, req *PlanRequest) (*Plan, error) {
	resp, err := c.c.Plan(ctx, requestToProto(req), grpc.MaxCallRecvMsgSize(MaxMessage), grpc.MaxCallSendMsgSize(MaxMessage))
	if err != nil {
		return nil, err
	}
	p, err := planFromProto(resp)
	if err != nil {
		return nil, Error(Internal, "the plugin's plan: %v", err)
	}
	return p, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Code says what kind of failure a plugin reports: a gRPC status code.
// The host maps codes, never message text: bad input reaches a daemon
// client as a 400, a plugin failure as a 502.
type Code = codes.Code

// The codes a plugin answers with.
const (
	// InvalidArgument: the request is bad — parameters, a file that is not
	// in a format the operation reads, an unknown operation. The user can
	// fix it.
	InvalidArgument = codes.InvalidArgument
	// NotFound: something the request names (a layer, a key) is not there.
	NotFound = codes.NotFound
	// FailedPrecondition: the request is well-formed but does not apply to
	// this model (e.g. no layer matches).
	FailedPrecondition = codes.FailedPrecondition
	// Internal: the plugin itself failed. Plain Go errors count as Unknown,
	// which the host treats the same way.
	Internal = codes.Internal
)

// Errorf is the error a plugin returns for bad input (InvalidArgument):
// the host shows the message to the user as it is.
func Errorf(format string, args ...any) error { return Error(InvalidArgument, format, args...) }

// Error is an error with a code.
func Error(code Code, format string, args ...any) error {
	return status.Error(code, fmt.Sprintf(format, args...))
}

// CodeOf is the code an error carries, also when wrapped (an error with a
// GRPCStatus method, as Error's and the host's are): OK for nil, Unknown
// for an error without one.
func CodeOf(err error) Code { return status.Code(err) }
