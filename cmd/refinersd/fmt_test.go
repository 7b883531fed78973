package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFmtModes: fmt prints, lists (-l), diffs (-d) and rewrites (-w) like
// gofmt; a formatted file is left alone, and a file that is not YAML is
// named with its error and left unchanged.
func TestFmtModes(t *testing.T) {
	dir := t.TempDir()
	messy := filepath.Join(dir, "messy.yaml")
	clean := filepath.Join(dir, "clean.yaml")
	broken := filepath.Join(dir, "broken.yaml")
	const messySrc = "layers:\n    - ReLU:\n    - Linear: {in_features: '4', out_features: 8}\nrefiners: 1\n"
	const want = "refiners: 1\nlayers:\n  - ReLU\n  - Linear: {in_features: \"4\", out_features: 8}\n"
	os.WriteFile(messy, []byte(messySrc), 0o640)
	os.WriteFile(clean, []byte(want), 0o644)
	os.WriteFile(broken, []byte("refiners: 1\nlayers: [\n"), 0o644)

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"fmt", messy}, want},
		{[]string{"fmt", "-l", messy, clean}, messy + "\n"},
		{[]string{"fmt", "-d", clean}, ""},
		{[]string{"fmt", "-d", messy}, "--- " + messy + "\n+++ " + messy + " (formatted)\n@@ -1,4 +1,4 @@\n-layers:\n-    - ReLU:\n-    - Linear: {in_features: '4', out_features: 8}\n refiners: 1\n+layers:\n+  - ReLU\n+  - Linear: {in_features: \"4\", out_features: 8}\n"},
	} {
		var b bytes.Buffer
		if err := run(c.args, &b); err != nil {
			t.Errorf("%v: %v", c.args, err)
		}
		if b.String() != c.want {
			t.Errorf("%v:\n%s\nwant:\n%s", c.args, b.String(), c.want)
		}
	}
	if src, _ := os.ReadFile(messy); string(src) != messySrc {
		t.Error("fmt without -w changed the file")
	}
	if err := run([]string{"fmt", "-w", messy, broken}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), broken+":2:1: RFN-S001") {
		t.Errorf("fmt -w with a broken file: %v", err)
	}
	if src, _ := os.ReadFile(messy); string(src) != want {
		t.Errorf("fmt -w wrote:\n%s", src)
	}
	if st, _ := os.Stat(messy); st.Mode().Perm() != 0o640 {
		t.Errorf("fmt -w changed the mode to %v", st.Mode().Perm())
	}
	if src, _ := os.ReadFile(broken); string(src) != "refiners: 1\nlayers: [\n" {
		t.Error("fmt -w changed a file it could not format")
	}
}

// TestUnifiedDiffHunks: changes far apart are separate hunks with three
// lines of context, close ones share a hunk; the hunks are diff -u's.
func TestUnifiedDiffHunks(t *testing.T) {
	var lines []string
	for i := 1; i <= 20; i++ {
		lines = append(lines, fmt.Sprintf("line %d", i))
	}
	before := strings.Join(lines, "\n") + "\n"
	for _, c := range []struct {
		name    string
		changed []int // 1-based lines replaced
		want    string
	}{
		{"far apart", []int{2, 18}, "@@ -1,5 +1,5 @@\n line 1\n-line 2\n+LINE 2\n line 3\n line 4\n line 5\n@@ -15,6 +15,6 @@\n line 15\n line 16\n line 17\n-line 18\n+LINE 18\n line 19\n line 20\n"},
		{"close", []int{5, 10}, "@@ -2,12 +2,12 @@\n line 2\n line 3\n line 4\n-line 5\n+LINE 5\n line 6\n line 7\n line 8\n line 9\n-line 10\n+LINE 10\n line 11\n line 12\n line 13\n"},
	} {
		after := append([]string(nil), lines...)
		for _, n := range c.changed {
			after[n-1] = fmt.Sprintf("LINE %d", n)
		}
		got := unifiedDiff("f", before, strings.Join(after, "\n")+"\n")
		_, body, _ := strings.Cut(got, "(formatted)\n")
		if body != c.want {
			t.Errorf("%s:\n%s\nwant:\n%s", c.name, body, c.want)
		}
	}
}
