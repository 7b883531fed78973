package atomicfile

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func leftovers(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), TempPrefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

func TestWriteIsAllOrNothing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	for _, c := range []struct {
		name    string
		write   func(w io.Writer) error
		mode    os.FileMode
		want    string // content afterwards
		wantErr string
	}{
		{"a new file", func(w io.Writer) error { _, err := io.WriteString(w, "one"); return err }, 0o600, "one", ""},
		{"a replacement", func(w io.Writer) error { _, err := io.WriteString(w, "two"); return err }, 0o644, "two", ""},
		{"a failed write", func(w io.Writer) error {
			io.WriteString(w, "half")
			return errors.New("disk on fire")
		}, 0o644, "two", "disk on fire"},
	} {
		err := Write(path, c.mode, c.write)
		if c.wantErr == "" && err != nil || c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
			t.Errorf("%s: %v", c.name, err)
		}
		b, _ := os.ReadFile(path)
		if string(b) != c.want {
			t.Errorf("%s: content %q, want %q", c.name, b, c.want)
		}
		if st, _ := os.Stat(path); c.wantErr == "" && st.Mode().Perm() != c.mode {
			t.Errorf("%s: mode %v, want %v", c.name, st.Mode().Perm(), c.mode)
		}
		if l := leftovers(t, dir); len(l) > 0 {
			t.Errorf("%s: temporary files left: %v", c.name, l)
		}
	}
}

func TestSealThenCommitOrAbort(t *testing.T) {
	dir := t.TempDir()
	f, err := Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(f, "#!/bin/sh\n")
	if err := f.Seal(0o755); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(f.Name()); err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("sealed file: %v %v", st, err)
	}
	if err := f.Commit(filepath.Join(dir, "bin"), 0o600); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(filepath.Join(dir, "bin")); st.Mode().Perm() != 0o755 {
		t.Errorf("committed mode %v, want the sealed 0755", st.Mode().Perm())
	}
	if err := f.Commit(filepath.Join(dir, "again"), 0o600); err == nil {
		t.Error("a second commit succeeded")
	}
	g, _ := Create(dir)
	io.WriteString(g, "x")
	g.Abort()
	g.Abort()
	if l := leftovers(t, dir); len(l) > 0 {
		t.Errorf("temporary files left: %v", l)
	}
}
