package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// TestSpecsTutorial follows docs/specs.md's tutorial: its spec, the errors
// it quotes (compared with what refinersd prints), the fix, and init, plan
// and the summary on the fixed model; so the page stays true.
func TestSpecsTutorial(t *testing.T) {
	page, err := os.ReadFile("../../docs/specs.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(page)
	_, rest, ok := strings.Cut(doc, "### 1. Write it")
	_, rest, ok2 := strings.Cut(rest, "```yaml\n")
	spec, _, ok3 := strings.Cut(rest, "```")
	if !ok || !ok2 || !ok3 {
		t.Fatal("docs/specs.md: no tutorial spec after \"### 1. Write it\"")
	}
	t.Chdir(t.TempDir())
	write := func(src string) {
		if err := os.WriteFile("cnn.yaml", []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	quoted := func(args ...string) {
		t.Helper()
		err := run(args, &bytes.Buffer{})
		if err == nil {
			t.Fatalf("refinersd %v: no error", args)
		}
		if !strings.Contains(doc, "refinersd: "+err.Error()+"\n") {
			t.Errorf("docs/specs.md does not quote what refinersd %s prints:\nrefinersd: %v", strings.Join(args, " "), err)
		}
	}
	write(spec)
	quoted("inspect", "cnn.yaml", "--input-shape", "1,3,32,32")
	quoted("inspect", "cnn.yaml", "--set", "width=10")
	write(strings.Replace(spec, "kernel_size: 3", "kernal_size: 3", 1))
	quoted("inspect", "cnn.yaml")

	const bad, fixed = `in_features: "${width * 2 * 8}"`, `in_features: "${width * 2 * 8 * 8}"`
	if !strings.Contains(spec, bad) || !strings.Contains(doc, fixed) {
		t.Fatalf("the tutorial's fix (%s for %s) is not in the page", fixed, bad)
	}
	write(strings.Replace(spec, bad, fixed, 1))
	var out bytes.Buffer
	for _, args := range [][]string{
		{"inspect", "cnn.yaml", "--input-shape", "1,3,32,32"},
		{"lint", "cnn.yaml"},
		{"init", "cnn.yaml", "--output", "cnn.safetensors", "--seed", "0"},
		{"plan", "cnn.yaml", "--weights", "cnn.safetensors"},
	} {
		out.Reset()
		if err := run(args, &out); err != nil {
			t.Fatalf("refinersd %v: %v\n%s", args, err, out.String())
		}
		for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			if strings.HasPrefix(line, "input ") || strings.HasPrefix(line, "wrote ") || strings.Contains(line, "scalars; ") {
				if !strings.Contains(doc, line) {
					t.Errorf("docs/specs.md does not quote refinersd %s's %q", args[0], line)
				}
			}
		}
	}
}
