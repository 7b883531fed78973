package hosts

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	pb "github.com/refiners-go/refiners/hosts/pluginpb"
	"github.com/refiners-go/refiners/sdk"
)

// TestPluginErrorsKeepTheirCodes: a plugin's error reaches the host's
// caller with the plugin's code and message (not the gRPC wrapping), and
// the host's own failures have codes of their own.
func TestPluginErrorsKeepTheirCodes(t *testing.T) {
	h := newHost(t, Options{CallTimeout: 2 * time.Second})
	install(t, h, "example")
	install(t, h, "faulty")
	ctx := context.Background()
	for _, c := range []struct {
		name, plugin, op, params string
		code                     codes.Code
		msg                      string
	}{
		{"bad parameters", "example", "lora", `{"target": 3}`, sdk.InvalidArgument, "plugin example: Plan: lora: want {target, file, down, up"},
		{"unknown operation", "example", "nope", `{}`, sdk.InvalidArgument, `unknown operation "nope"`},
		{"a crash", "faulty", "crash", ``, codes.Unavailable, "crashed during Plan"},
		{"a hang", "faulty", "hang", ``, codes.DeadlineExceeded, "did not answer Plan within 2s"},
		{"not installed", "missing", "x", ``, sdk.NotFound, "is not installed"},
	} {
		_, err := h.Plan(ctx, c.plugin, &pb.PlanRequest{Operation: c.op, ParamsJson: c.params})
		if got := sdk.CodeOf(err); got != c.code || !strings.Contains(err.Error(), c.msg) || strings.Contains(err.Error(), "rpc error") {
			t.Errorf("%s: code %v, error %v; want %v and %q", c.name, got, err, c.code, c.msg)
		}
	}
}
