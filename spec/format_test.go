package spec

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"testing/fstest"

	"gopkg.in/yaml.v3"

	"github.com/refiners-go/refiners/core"
)

func TestFormat(t *testing.T) {
	for _, c := range []struct {
		name, in, want string
	}{
		{"keys in canonical order, layers last",
			"layers: [ReLU]\nparams: {dim: 4}\nname: M\nrefiners: 1\n",
			"refiners: 1\nname: M\nparams: {dim: 4}\nlayers: [ReLU]\n"},
		{"block keys in canonical order, blank line between blocks",
			"refiners: 1\nblocks:\n  A:\n    layers: [ReLU]\n    kind: Residual\n  # B's comment\n  B:\n    layers: [ReLU]\n    params: {x: 1}\n    description: b\nlayers: [A, B]\n",
			"refiners: 1\nblocks:\n  A:\n    kind: Residual\n    layers: [ReLU]\n\n  # B's comment\n  B:\n    description: b\n    params: {x: 1}\n    layers: [ReLU]\nlayers: [A, B]\n"},
		{"argumentless layers are bare names",
			"refiners: 1\nlayers:\n  - ReLU:\n  - SiLU: {}\n  - GeLU\n",
			"refiners: 1\nlayers:\n  - ReLU\n  - SiLU\n  - GeLU\n"},
		{"four-space indentation becomes two",
			"refiners: 1\nlayers:\n    -   Residual:\n            - Linear: {in_features: 4, out_features: 4}\n",
			"refiners: 1\nlayers:\n  - Residual:\n      - Linear: {in_features: 4, out_features: 4}\n"},
		{"quotes only where needed, double",
			"refiners: 1\nparams: {d: 4, s: 'x'}\nargs: 'd=${d}'\nlayers:\n  - Linear: {in_features: '${d}', out_features: \"4\", bias: \"true\"}\n",
			"refiners: 1\nargs: d=${d}\nparams: {d: 4, s: x}\nlayers:\n  - Linear: {in_features: \"${d}\", out_features: \"4\", bias: \"true\"}\n"},
		{"children after the arguments",
			"refiners: 1\nlayers:\n  - Chain:\n      layers: [ReLU]\n      repeat: 2\n",
			"refiners: 1\nlayers:\n  - Chain:\n      repeat: 2\n      layers: [ReLU]\n"},
		{"the writer's flow or block style is kept",
			"refiners: 1\nlayers:\n  - Linear:\n      in_features: 4\n      out_features: 4\n  - Chain:\n      - ReLU\n      - SiLU\n",
			"refiners: 1\nlayers:\n  - Linear:\n      in_features: 4\n      out_features: 4\n  - Chain:\n      - ReLU\n      - SiLU\n"},
		{"a flow list of items with arguments is one item a line",
			"refiners: 1\nlayers: [ReLU, Linear: {in_features: 4, out_features: 4}]\n",
			"refiners: 1\nlayers:\n  - ReLU\n  - Linear: {in_features: 4, out_features: 4}\n"},
		{"comments are kept",
			"# head\nrefiners: 1 # version\nlayers:\n  # the first layer\n  - ReLU # inline\n  - Linear:\n      in_features: 4 # in\n      out_features: 4\n# foot\n",
			"# head\nrefiners: 1 # version\nlayers:\n  # the first layer\n  - ReLU # inline\n  - Linear:\n      in_features: 4 # in\n      out_features: 4\n# foot\n"},
		{"folded text wrapped at 80 columns",
			"refiners: 1\ndescription: >\n  " + strings.Repeat("abcdefghi ", 14) + "end.\nlayers: [ReLU]\n",
			"refiners: 1\ndescription: >\n  " + strings.TrimSpace(strings.Repeat("abcdefghi ", 7)) + "\n  " + strings.Repeat("abcdefghi ", 7) + "end.\nlayers: [ReLU]\n"},
		{"a nested layer argument is an item",
			"refiners: 1\nlayers:\n  - GLU: {activation: {SiLU: }}\n",
			"refiners: 1\nlayers:\n  - GLU: {activation: SiLU}\n"},
		{"anchors and aliases are kept",
			"refiners: 1\nlayers:\n  - Residual: &r\n      - ReLU\n  - Chain: *r\n",
			"refiners: 1\nlayers:\n  - Residual: &r\n      - ReLU\n  - Chain: *r\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := Format("x.yaml", []byte(c.in))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != c.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, c.want)
			}
			again, err := Format("x.yaml", got)
			if err != nil || string(again) != string(got) {
				t.Errorf("not idempotent: %v\n%s", err, again)
			}
		})
	}
}

func TestFormatRefusesBadYAML(t *testing.T) {
	_, err := Format("x.yaml", []byte("refiners: 1\nlayers: [ReLU\n"))
	var es Errors
	if !errors.As(err, &es) || es[0].Code != CodeYAML || !strings.HasPrefix(es[0].Error(), "x.yaml:") {
		t.Errorf("got %v, want an %s error", err, CodeYAML)
	}
}

// TestFormatKeepsEveryModel: each committed spec, formatted (with the
// files it imports), builds the same model (tree, keys and shapes), and
// formatting it again changes nothing; so does every spec of the broken
// corpus that is valid YAML.
func TestFormatKeepsEveryModel(t *testing.T) {
	paths, _ := filepath.Glob("../specs/*.yaml")
	formatted := fstest.MapFS{}
	original := fstest.MapFS{}
	for _, p := range paths {
		src, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Format(p, src)
		if err != nil {
			t.Fatal(err)
		}
		again, err := Format(p, got)
		if err != nil || string(again) != string(got) {
			t.Errorf("%s: formatting is not idempotent: %v", p, err)
		}
		original[filepath.Base(p)] = &fstest.MapFile{Data: src}
		formatted[filepath.Base(p)] = &fstest.MapFile{Data: got}
	}
	models := 0
	for name, f := range original {
		if !strings.Contains(string(f.Data), "\nlayers:") {
			continue // a block library
		}
		a, errA := LoadFS(original, name)
		b, errB := LoadFS(formatted, name)
		if errA != nil || errB != nil {
			t.Fatalf("%s: %v / %v", name, errA, errB)
		}
		ma, errA := a.Build(nil)
		mb, errB := b.Build(nil)
		if errA != nil || errB != nil {
			t.Fatalf("%s: %v / %v", name, errA, errB)
		}
		if core.Tree(ma, -1) != core.Tree(mb, -1) || stateShapes(ma) != stateShapes(mb) || a.Doc != b.Doc || a.Args != b.Args {
			t.Errorf("%s: formatting changed the model", name)
		}
		models++
	}
	if models < 8 {
		t.Errorf("%d models compared, want the committed specs (at least 8)", models)
	}
	broken, _ := filepath.Glob("testdata/broken/*.yaml")
	for _, p := range broken {
		src, _ := os.ReadFile(p)
		got, err := Format(p, src)
		if err != nil {
			continue
		}
		again, err := Format(p, got)
		if err != nil || string(again) != string(got) {
			t.Errorf("%s: formatting is not idempotent: %v\n%s\n---\n%s", p, err, got, again)
		}
	}
}

func stateShapes(m core.Module) string {
	var b strings.Builder
	for _, e := range core.StateDict(m) {
		fmt.Fprintf(&b, "%s %v\n", e.Key, e.Shape)
	}
	return b.String()
}

// FuzzFormat: whatever YAML it is given, Format does not panic, and what
// it prints formats to itself and parses as the same YAML value.
func FuzzFormat(f *testing.F) {
	paths, _ := filepath.Glob("../specs/*.yaml")
	broken, _ := filepath.Glob("testdata/broken/*.yaml")
	for _, p := range append(paths, broken...) {
		src, err := os.ReadFile(p)
		if err == nil {
			f.Add(src)
		}
	}
	f.Add([]byte("refiners: 1\nlayers: [ReLU, {Linear: {in_features: 1, out_features: 2}}]\n"))
	f.Fuzz(func(t *testing.T, src []byte) {
		got, err := Format("f.yaml", src)
		if err != nil {
			return
		}
		again, err := Format("f.yaml", got)
		if err != nil || string(again) != string(got) {
			t.Fatalf("not idempotent (%v):\n%s\n---\n%s", err, got, again)
		}
		var before, after any
		if yaml.Unmarshal(src, &before) != nil {
			return // a node tree that is no plain value (a key given twice): spec reports it
		}
		if err := yaml.Unmarshal(got, &after); err != nil {
			t.Fatalf("the output does not parse (%v):\n%s", err, got)
		}
		if !reflect.DeepEqual(normalize(before), normalize(after)) {
			t.Fatalf("the value changed:\n%s\n---\n%s", src, got)
		}
	})
}

// normalize makes a decoded YAML value comparable whatever its key order
// and with argumentless items (`X:`, `X: {}`) written as bare names.
func normalize(v any) any {
	switch x := v.(type) {
	case map[string]any:
		if len(x) == 1 {
			for k, val := range x {
				if m, ok := val.(map[string]any); val == nil || ok && len(m) == 0 {
					return k
				}
			}
		}
		out := map[string]any{}
		for k, val := range x {
			out[k] = normalize(val)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, val := range x {
			out[i] = normalize(val)
		}
		return out
	}
	return v
}
