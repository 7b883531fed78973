package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestTamperedPluginIsNamed: a plugin binary changed after install is
// flagged by `plugins list`, and a spec using its layer types says the
// plugin was refused, not that it is not installed.
func TestTamperedPluginIsNamed(t *testing.T) {
	dir := t.TempDir()
	bin, plugins := filepath.Join(dir, "example"), filepath.Join(dir, "plugins")
	if msg, err := exec.Command("go", "build", "-o", bin, "../../plugins/example").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, msg)
	}
	var out bytes.Buffer
	if err := run([]string{"plugins", "install", bin, "--dir", plugins}, &out); err != nil {
		t.Fatal(err)
	}
	specPath := filepath.Join(dir, "scaled.yaml")
	os.WriteFile(specPath, []byte("refiners: 1\nlayers:\n  - example/Scaled: {factor: 3}\n"), 0o644)
	if err := run([]string{"inspect", specPath, "--plugins-dir", plugins}, &out); err != nil {
		t.Fatalf("inspect before tampering: %v", err)
	}
	f, err := os.OpenFile(filepath.Join(plugins, "example.plugin"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("x"))
	f.Close()

	out.Reset()
	err = run([]string{"plugins", "list", "--dir", plugins}, &out)
	if err == nil || !strings.Contains(out.String(), "REFUSED: binary") || !strings.Contains(out.String(), "changed since it was installed") {
		t.Errorf("plugins list of a tampered plugin: %v\n%s", err, out.String())
	}
	err = run([]string{"inspect", specPath, "--plugins-dir", plugins}, &out)
	if err == nil || strings.Contains(err.Error(), "not installed") || !strings.Contains(err.Error(), "changed since it was installed") {
		t.Errorf("inspect with a tampered plugin: %v", err)
	}
}
