package hosts

import (
	"strings"
	"testing"

	"github.com/refiners-go/refiners/adapt"
	"github.com/refiners-go/refiners/sdk"
)

// TestCheckPlanInsert: the kit accepts a well-formed insert patch and
// says what is wrong with a bad one.
func TestCheckPlanInsert(t *testing.T) {
	req := &sdk.PlanRequest{
		Model: []sdk.Layer{{Path: "Chain.Linear", Type: "Linear", Params: map[string][]int64{"weight": {8, 4}}}},
		Files: []sdk.File{{ID: "f", Tensors: []sdk.Tensor{{Key: "w", Shape: []int64{8, 4}}}}},
	}
	linear := map[string]any{"layer": map[string]any{"type": "Linear", "in_features": 4, "out_features": 8, "bias": false}, "index": 0}
	for _, tc := range []struct {
		name    string
		target  string
		branch  map[string]any
		binding string
		want    string // "" for a pass
	}{
		{"into the root", "", linear, "weight", ""},
		{"into a chain", "Chain", linear, "weight", ""},
		{"into a missing chain", "Other", linear, "weight", `targets "Other", which is not in the model`},
		{"an unknown spec", "", map[string]any{"spec": "no_such_spec.yaml"}, "weight", "no_such_spec.yaml"},
		{"an unknown branch field", "", map[string]any{"layer": linear["layer"], "where": 1}, "weight", `unknown branch field "where"`},
		{"a parameter the branch has not", "", linear, "bias", `binds parameter "bias"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plan := &sdk.Plan{Report: &sdk.Report{}, Patches: []sdk.Patch{{Target: tc.target, Kind: adapt.InsertKind, Branch: tc.branch,
				Bindings: []sdk.Binding{{File: "f", Key: "w", Param: tc.binding}}}}}
			err := checkPlan(plan, req)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused a good plan: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
