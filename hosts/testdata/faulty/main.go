// Command faulty is a test plugin that misbehaves on request: operation
// "crash" exits the process in the middle of Plan, "hang" never answers,
// "ok" answers with an empty plan.
package main

import (
	"context"
	"os"

	pb "github.com/refiners-go/refiners/pluginproto"
	"github.com/refiners-go/refiners/sdk"
)

type planner struct{}

func (planner) Describe(context.Context) (*pb.Description, error) {
	return &pb.Description{Name: "faulty", Version: "0.0.1", Protocol: sdk.ProtocolVersion,
		Operations: []*pb.Operation{{Name: "ok"}, {Name: "crash"}, {Name: "hang"}}}, nil
}

func (planner) Plan(ctx context.Context, req *pb.PlanRequest) (*pb.PlanResponse, error) {
	switch req.Operation {
	case "crash":
		os.Exit(3)
	case "hang":
		<-make(chan struct{})
	}
	sdk.Log.Warn("planning", "operation", req.Operation)
	return &pb.PlanResponse{Report: &pb.Report{Format: "faulty"}}, nil
}

func main() { sdk.Serve(planner{}) }
