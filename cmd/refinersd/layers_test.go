package main

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core"
)

// TestEveryLayerIsDocumented: each layer type of core and models/* has its
// Refiners name, inputs, outputs and a doc for every argument.
func TestEveryLayerIsDocumented(t *testing.T) {
	if missing := core.Undocumented(); len(missing) > 0 {
		t.Errorf("the layer reference lacks (add it with core.Document next to the registration):\n%s", strings.Join(missing, "\n"))
	}
}

// TestCommittedLayerReferenceIsCurrent: docs/layers.md is what the
// registry generates today.
func TestCommittedLayerReferenceIsCurrent(t *testing.T) {
	var b bytes.Buffer
	if err := run([]string{"layers", "--markdown"}, &b); err != nil {
		t.Fatal(err)
	}
	committed, err := os.ReadFile("../../docs/layers.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(committed, b.Bytes()) {
		t.Error("docs/layers.md is stale: regenerate it with `go generate ./cmd/refinersd`")
	}
	for _, name := range core.LayerTypes() {
		if !bytes.Contains(committed, []byte("\n## "+name+"\n")) {
			t.Errorf("docs/layers.md has no section for %s", name)
		}
	}
}

func TestLayersVerb(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []string // substrings of the output, or of the error
		err  bool
	}{
		{args: []string{"layers"}, want: []string{"Conv2d", "GroupNorm  ", "SinusoidalEmbedding", "refinersd layers NAME"}},
		{args: []string{"layers", "GroupNorm"}, want: []string{"GroupNorm — ", "Refiners:  fl.GroupNorm", "num_groups", "required", "eps", "1e-05", "added to the variance"}},
		{args: []string{"layers", "UseContext"}, want: []string{"Reads:", "{context}/{key}"}},
		{args: []string{"layers", "Residual"}, want: []string{"Children:", "Arguments: none"}},
		{args: []string{"layers", "GroupNrom"}, want: []string{`no layer type "GroupNrom"`, "did you mean GroupNorm?"}, err: true},
		{args: []string{"layers", "--markdown", "Linear"}, want: []string{"no NAME"}, err: true},
	} {
		var b bytes.Buffer
		err := run(c.args, &b)
		got := b.String()
		if c.err {
			if err == nil {
				t.Errorf("%v: no error", c.args)
				continue
			}
			got = err.Error()
		} else if err != nil {
			t.Errorf("%v: %v", c.args, err)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(got, w) {
				t.Errorf("%v: %q not in\n%s", c.args, w, got)
			}
		}
	}
}

// TestCommittedErrorIndexIsCurrent: docs/errors.md is what spec's error
// index generates today.
func TestCommittedErrorIndexIsCurrent(t *testing.T) {
	var b bytes.Buffer
	if err := run([]string{"explain", "--markdown"}, &b); err != nil {
		t.Fatal(err)
	}
	committed, err := os.ReadFile("../../docs/errors.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(committed, b.Bytes()) {
		t.Error("docs/errors.md is stale: regenerate it with `go generate ./cmd/refinersd`")
	}
}

func TestExplainVerb(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []string
		err  bool
	}{
		{args: []string{"explain"}, want: []string{"RFN-S001", "RFN-S052", "refinersd explain CODE"}},
		{args: []string{"explain", "RFN-S015"}, want: []string{"RFN-S015: the layer rejected its arguments", "GroupNorm: 16 channels not divisible by 5 groups", "Fix:"}},
		{args: []string{"explain", "s41"}, want: []string{"--set dimm=16", `override "dimm"`}},
		{args: []string{"explain", "RFN-S099"}, want: []string{`no error code "RFN-S099"`}, err: true},
	} {
		var b bytes.Buffer
		err := run(c.args, &b)
		got := b.String()
		if c.err {
			if err == nil {
				t.Errorf("%v: no error", c.args)
				continue
			}
			got = err.Error()
		} else if err != nil {
			t.Errorf("%v: %v", c.args, err)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(got, w) {
				t.Errorf("%v: %q not in\n%s", c.args, w, got)
			}
		}
	}
}
