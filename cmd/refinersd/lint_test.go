package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLintVerb: findings are printed one a line and fail the command; a
// clean spec passes; --set reaches the build lint checks.
func TestLintVerb(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.yaml")
	os.WriteFile(path, []byte("refiners: 1\nparams: {n: 4, spare: 1}\nlayers:\n  - Linear: {in_features: \"${n}\", out_features: 4, bias: true}\n"), 0o644)
	var b bytes.Buffer
	err := run([]string{"lint", path}, &b)
	if err == nil || !strings.Contains(err.Error(), "2 findings") {
		t.Errorf("lint: %v", err)
	}
	for _, w := range []string{path + ":2:16: unused-param: parameter spare is never used", path + ":4:52: default-arg: bias of Linear is its default (true)"} {
		if !strings.Contains(b.String(), w) {
			t.Errorf("%q not in\n%s", w, b.String())
		}
	}
	b.Reset()
	if err := run([]string{"lint", "../../specs/vit.yaml", "--set", "num_layers=2"}, &b); err != nil || b.Len() != 0 {
		t.Errorf("lint of vit.yaml: %v\n%s", err, b.String())
	}
	if err := run([]string{"lint", "../../specs/vit.yaml", "--set", "num_layer=2"}, &b); err == nil || !strings.Contains(err.Error(), "RFN-S041") {
		t.Errorf("lint with a bad --set: %v", err)
	}
}
