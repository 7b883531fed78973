package spec

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestLint(t *testing.T) {
	for _, c := range []struct {
		name string
		src  string
		want []string // "line:col check fragment", in order
	}{
		{"clean", `refiners: 1
params: {dim: 4}
blocks:
  Block:
    params: {width: null}
    layers:
      - Linear: {in_features: "${width}", out_features: "${dim}"}
layers:
  - Block: {width: 4}
`, nil},
		{"unused parameters", `refiners: 1
params: {dim: 4, spare: 2, derived: "${dim * 2}"}
blocks:
  Block:
    params: {width: null, extra: 3}
    layers:
      - Linear: {in_features: "${width}", out_features: "${derived}"}
layers:
  - Block: {width: "${dim}"}
`, []string{"2:18 unused-param parameter spare is never used", "5:27 unused-param parameter extra of block Block is never used"}},
		{"unused blocks, also when used only by an unused block", `refiners: 1
blocks:
  Used:
    layers: [ReLU]
  Orphan:
    layers: [Inner]
  Inner:
    layers: [SiLU]
layers:
  - Used
`, []string{"5:3 unused-block block Orphan is never used", "7:3 unused-block block Inner is never used"}},
		{"a block used as a layer argument is used", `refiners: 1
blocks:
  Act:
    layers: [SiLU]
layers:
  - GLU: {activation: Act}
`, nil},
		{"shadowed names", `refiners: 1
params: {groups: 8, index: 0, "true": 1}
blocks:
  Norm:
    params: {channels: null, groups: 4}
    layers:
      - GroupNorm: {channels: "${channels}", num_groups: "${groups}"}
  Follows:
    params: {channels: null, groups: "${groups}"}
    layers:
      - GroupNorm: {channels: "${channels}", num_groups: "${groups}"}
layers:
  - Norm: {channels: "${8 + index}"}
  - Follows: {channels: 8}
`, []string{"2:21 shadowed parameter index is hidden by repeat's index", "2:31 shadowed parameter true cannot be used",
			"5:30 shadowed parameter groups of block Norm shadows the spec's parameter groups (x.yaml:2:10): inside Norm, ${groups} is the block's default 4"}},
		{"arguments equal to their defaults", `refiners: 1
params: {s: 1}
blocks:
  B:
    params: {k: 3}
    layers:
      - Conv2d: {in_channels: 1, out_channels: 1, kernel_size: "${k}"}
layers:
  - Conv2d: {in_channels: 1, out_channels: 1, kernel_size: 3, stride: 1, padding: 1, use_bias: true}
  - Conv2d: {in_channels: 1, out_channels: 1, kernel_size: 3, stride: "${s}"}
  - Slicing: {dim: 1, end: 4, start: 0.0}
  - B: {k: 3}
  - B: {k: 5}
`, []string{"9:63 default-arg stride of Conv2d is its default (1)", "9:86 default-arg use_bias of Conv2d is its default (true)",
			"11:31 default-arg start of Slicing is its default (0)", "12:9 default-arg k of block B is its default (3)"}},
		{"an argument that is the default in some uses only", `refiners: 1
blocks:
  B:
    params: {k: 3}
    layers:
      - Conv2d: {in_channels: 1, out_channels: 1, kernel_size: "${k}"}
layers:
  - B: {k: 3}
  - B: {k: 3}
`, []string{"8:9 default-arg k of block B is its default (3)", "9:9 default-arg k of block B is its default (3)"}},
		{"weights after a Return", `refiners: 1
layers:
  - Linear: {in_features: 4, out_features: 4}
  - Return
  - Linear: {in_features: 4, out_features: 4}
  - ReLU
`, []string{"5:5 unreachable-weights the weights of this Linear cannot reach the output: it comes after a Return"}},
		{"weights feeding only a layer that ignores its input", `refiners: 1
layers:
  - Linear: {in_features: 4, out_features: 4}
  - UseContext: {context: c, key: k}
  - Linear: {in_features: 4, out_features: 4}
`, []string{"3:5 unreachable-weights the weights of this Linear cannot reach the output: its output is not used"}},
		{"weights in a Passthrough after its last context write", `refiners: 1
layers:
  - Passthrough:
      - Linear: {in_features: 4, out_features: 4}
      - SetContext: {context: c, key: k}
      - Linear: {in_features: 4, out_features: 4}
  - Linear: {in_features: 4, out_features: 4}
`, []string{"6:9 unreachable-weights the weights of this Linear cannot reach the output"}},
		{"a whole dead block is one finding", `refiners: 1
blocks:
  MLP:
    layers:
      - Linear: {in_features: 4, out_features: 4}
      - Linear: {in_features: 4, out_features: 4}
layers:
  - MLP
  - UseContext: {context: c, key: k}
`, []string{"8:5 unreachable-weights the weights of this MLP cannot reach the output"}},
		{"weights whose output is a context value are reachable", `refiners: 1
layers:
  - Linear: {in_features: 4, out_features: 4}
  - SetContext: {context: c, key: k}
  - Parallel:
      - UseContext: {context: c, key: k}
      - Linear: {in_features: 4, out_features: 4}
`, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := Parse("x.yaml", []byte(c.src))
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.Lint(nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(c.want) {
				t.Errorf("%d findings, want %d:\n%s", len(got), len(c.want), findings(got))
			}
			for i, w := range c.want {
				if i >= len(got) {
					break
				}
				pos, rest, _ := strings.Cut(w, " ")
				check, frag, _ := strings.Cut(rest, " ")
				if !strings.HasPrefix(got[i].String(), "x.yaml:"+pos+": "+check+": ") || !strings.Contains(got[i].Msg, frag) {
					t.Errorf("finding %d: %s\nwant %s", i, got[i], w)
				}
			}
		})
	}
}

func findings(fs []Finding) string {
	var b strings.Builder
	for _, f := range fs {
		b.WriteString(f.String() + "\n")
	}
	return b.String()
}

// TestLintCommittedSpecs: the committed models have no unused parameters
// or blocks, no shadowing and no unreachable weights (arguments equal to
// their defaults are a matter of taste, and allowed).
func TestLintCommittedSpecs(t *testing.T) {
	paths, _ := filepath.Glob("../specs/*.yaml")
	linted := 0
	for _, p := range paths {
		s, err := Load(p)
		if err != nil {
			continue // a block library: linted through the specs importing it
		}
		got, err := s.Lint(nil)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		for _, f := range got {
			if f.Check != "default-arg" {
				t.Errorf("%s", f)
			}
		}
		linted++
	}
	if linted < 8 {
		t.Errorf("linted %d specs, want the committed models (at least 8)", linted)
	}
}
