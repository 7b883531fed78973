// Command faulty is a test plugin that misbehaves on request: operation
// "crash" exits the process in the middle of Plan, "hang" never answers,
// "ok" answers with an empty plan.
package main

import (
	"context"
	"os"

	"github.com/refiners-go/refiners/sdk"
)

type planner struct{}

func (planner) Describe(context.Context) (*sdk.Description, error) {
	return &sdk.Description{Name: "faulty", Version: "0.0.1",
		Operations: []sdk.Operation{{Name: "ok"}, {Name: "crash"}, {Name: "hang"}}}, nil
}

func (planner) Plan(ctx context.Context, req *sdk.PlanRequest) (*sdk.Plan, error) {
	switch req.Operation {
	case "crash":
		os.Exit(3)
	case "hang":
		<-make(chan struct{})
	}
	sdk.Log.Warn("planning", "operation", req.Operation)
	return &sdk.Plan{Report: &sdk.Report{Format: "faulty"}}, nil
}

func main() { sdk.Serve(planner{}) }
