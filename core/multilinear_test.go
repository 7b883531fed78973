package core

import (
	"fmt"
	"strings"
	"testing"
)

func TestMultiLinear(t *testing.T) {
	for _, tc := range []struct {
		name string
		desc map[string]any
		keys string // state-dict keys and shapes, or the error
	}{
		{"three layers", map[string]any{"type": "MultiLinear", "input_dim": 6, "output_dim": 4, "inner_dim": 8, "num_layers": 3},
			"Linear_1.weight[8 6] Linear_1.bias[8] Linear_2.weight[8 8] Linear_2.bias[8] Linear_3.weight[4 8] Linear_3.bias[4]"},
		{"one layer reads inner_dim", map[string]any{"type": "MultiLinear", "input_dim": 6, "output_dim": 4, "inner_dim": 5, "num_layers": 1},
			"Linear.weight[4 5] Linear.bias[4]"},
		{"no layers", map[string]any{"type": "MultiLinear", "input_dim": 6, "output_dim": 4, "inner_dim": 5, "num_layers": 0},
			"error: MultiLinear: argument num_layers must be at least 1, got 0"},
		{"missing inner_dim", map[string]any{"type": "MultiLinear", "input_dim": 6, "output_dim": 4, "num_layers": 2},
			"error: MultiLinear: missing required argument inner_dim (int)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := BuildLayer(tc.desc)
			var got string
			if err != nil {
				got = "error: " + err.Error()
			} else {
				var parts []string
				for _, e := range StateDict(m) {
					parts = append(parts, fmt.Sprintf("%s%v", e.Key, e.Shape))
				}
				got = strings.Join(parts, " ")
				if TypeName(m) != "MultiLinear" {
					t.Errorf("type name %s", TypeName(m))
				}
			}
			if got != tc.keys {
				t.Errorf("got  %s\nwant %s", got, tc.keys)
			}
		})
	}
}
