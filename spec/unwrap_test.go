package spec

import (
	"errors"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core"
)

// TestUnwrap: `unwrap: true` makes the model its single chain layer
// itself (keys without that layer's name); anything else is an error
// naming the problem.
func TestUnwrap(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		keys      []string // the state dict's keys, when it builds
		problem   string   // a fragment of the error otherwise
	}{
		{"chain", "unwrap: true\nlayers:\n  - Chain: [Linear: {in_features: 2, out_features: 3}]\n",
			[]string{"Linear.weight", "Linear.bias"}, ""},
		{"no unwrap", "layers:\n  - Chain: [Linear: {in_features: 2, out_features: 3}]\n",
			[]string{"Chain.Linear.weight", "Chain.Linear.bias"}, ""},
		{"two layers", "unwrap: true\nlayers:\n  - Chain: [ReLU]\n  - ReLU\n", nil, "layers has 2 items"},
		{"leaf", "unwrap: true\nlayers:\n  - Linear: {in_features: 2, out_features: 3}\n", nil, "must be a chain"},
		{"kind", "unwrap: true\nkind: Residual\nlayers:\n  - Chain: [ReLU]\n", nil, "kind, args and provider do not apply"},
		{"not a bool", "unwrap: maybe\nlayers:\n  - Chain: [ReLU]\n", nil, "unwrap must be true or false"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Parse("x.yaml", []byte("refiners: 1\n"+tc.src))
			var m *core.Chain
			if err == nil {
				m, err = s.Build(nil)
			}
			if tc.problem != "" {
				var es Errors
				if err == nil || !errors.As(err, &es) || !strings.Contains(err.Error(), tc.problem) {
					t.Fatalf("got error %v, want one mentioning %q", err, tc.problem)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var keys []string
			for _, e := range core.StateDict(m) {
				keys = append(keys, e.Key)
			}
			if strings.Join(keys, " ") != strings.Join(tc.keys, " ") {
				t.Errorf("keys %v, want %v", keys, tc.keys)
			}
		})
	}
}
