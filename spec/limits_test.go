package spec

import (
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/refiners-go/refiners/core"
)

// countingFS counts the files opened from an fs.FS.
type countingFS struct {
	fs.FS
	opens atomic.Int64
}

func (c *countingFS) Open(name string) (fs.File, error) {
	c.opens.Add(1)
	return c.FS.Open(name)
}

// diamond is a chain of files, each importing the next twice (under two
// spellings), the last one defining a block the first one uses.
func diamond(levels int) fstest.MapFS {
	fsys := fstest.MapFS{}
	for i := range levels {
		src := fmt.Sprintf("refiners: 1\nimports: [e%d.yaml, ./e%d.yaml]\n", i+1, i+1)
		if i == 0 {
			src += "layers: [Leaf]\n"
		}
		fsys[fmt.Sprintf("e%d.yaml", i)] = &fstest.MapFile{Data: []byte(src)}
	}
	fsys[fmt.Sprintf("e%d.yaml", levels)] = &fstest.MapFile{Data: []byte("refiners: 1\nblocks:\n  Leaf: {layers: [Identity]}\n")}
	return fsys
}

func TestDiamondImportsReadEachFileOnce(t *testing.T) {
	for _, levels := range []int{1, 4, 12} {
		fsys := &countingFS{FS: diamond(levels)}
		s, err := LoadFS(fsys, "e0.yaml")
		if err != nil {
			t.Fatalf("%d levels: %v", levels, err)
		}
		// LoadFS reads the main file, then each import once.
		if got := fsys.opens.Load(); got != int64(levels+1) {
			t.Errorf("%d levels: %d file reads, want %d (one per file)", levels, got, levels+1)
		}
		if len(s.Files) != levels+1 {
			t.Errorf("%d levels: Files = %v", levels, s.Files)
		}
		if _, err := s.Build(nil); err != nil {
			t.Errorf("%d levels: build: %v", levels, err)
		}
	}
}

func TestDiamondImportOfABrokenFileReportsItOnce(t *testing.T) {
	fsys := fstest.MapFS{
		"main.yaml": {Data: []byte("refiners: 1\nimports: [a.yaml, b.yaml]\nlayers: [Identity]\n")},
		"a.yaml":    {Data: []byte("refiners: 1\nimports: [bad.yaml]\n")},
		"b.yaml":    {Data: []byte("refiners: 1\nimports: [bad.yaml]\n")},
		"bad.yaml":  {Data: []byte("refiners: 1\nblocks: 3\n")},
	}
	_, err := LoadFS(fsys, "main.yaml")
	if err == nil || strings.Count(err.Error(), "blocks must be a mapping") != 1 {
		t.Errorf("error = %v; want the broken file's problem once", err)
	}
}

// writeFile writes a file for a test, creating its folder.
func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestSpecReadsAreBoundedAndConfined(t *testing.T) {
	dir := t.TempDir()
	specs := filepath.Join(dir, "specs")
	lib := "refiners: 1\nblocks:\n  B: {layers: [Identity]}\n"
	writeFile(t, filepath.Join(dir, "outside.yaml"), lib)
	writeFile(t, filepath.Join(dir, "other", "lib.yaml"), lib)
	writeFile(t, filepath.Join(specs, "sub", "lib.yaml"), lib)
	fifo := filepath.Join(specs, "fifo.yaml")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(specs, "big.yaml")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(MaxFileSize + 1) // sparse: no disk used
	f.Close()
	if err := os.Symlink(filepath.Join(dir, "outside.yaml"), filepath.Join(specs, "link.yaml")); err != nil {
		t.Fatal(err)
	}
	importing := func(name, rel string) string {
		return writeFile(t, filepath.Join(specs, name), fmt.Sprintf("refiners: 1\nimports: [%s]\nlayers: [B]\n", rel))
	}
	cases := []struct {
		name, path string
		opts       Options
		want       string // error fragment; "" loads
	}{
		{"a device", "/dev/zero", Options{}, "not a regular file"},
		{"an import of a device", importing("zero.yaml", "../../../../../../../../../../dev/zero"), Options{}, "leaves the spec's folder"},
		{"a FIFO", fifo, Options{}, "not a regular file"},
		{"an import of a FIFO", importing("imports_fifo.yaml", "fifo.yaml"), Options{}, "not a regular file"},
		{"a folder", specs, Options{}, "not a regular file"},
		{"a file over the size limit", big, Options{}, "larger than a spec may be"},
		{"an import over the size limit", importing("imports_big.yaml", "big.yaml"), Options{}, "larger than a spec may be"},
		{"an import leaving the folder", importing("escape.yaml", "../outside.yaml"), Options{}, "leaves the spec's folder"},
		{"an absolute import", importing("abs.yaml", filepath.Join(dir, "outside.yaml")), Options{}, "an absolute path"},
		{"an absolute import of /etc/passwd", importing("passwd.yaml", "/etc/passwd"), Options{}, "an absolute path"},
		{"a link leaving the folder", importing("link_import.yaml", "link.yaml"), Options{}, "is a link to"},
		{"an import in a subfolder", importing("sub.yaml", "sub/lib.yaml"), Options{}, ""},
		{"an allowed folder", importing("allowed.yaml", "../other/lib.yaml"), Options{ImportDirs: []string{filepath.Join(dir, "other")}}, ""},
		{"a folder not allowed", importing("not_allowed.yaml", "../other/lib.yaml"), Options{ImportDirs: []string{filepath.Join(dir, "elsewhere")}}, "leaves the spec's folder"},
	}
	for _, c := range cases {
		done := make(chan error, 1)
		go func() {
			_, err := LoadWith(c.path, c.opts)
			done <- err
		}()
		var err error
		select {
		case err = <-done:
		case <-time.After(20 * time.Second):
			t.Fatalf("%s: loading %s hangs", c.name, c.path)
		}
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: error = %v; want %q", c.name, err, c.want)
		}
	}
}

func TestOverflowIsAnError(t *testing.T) {
	for _, c := range []struct {
		name, src string
		sets      map[string]string
		want      string
	}{
		{"a product in an argument", "refiners: 1\nparams: {n: 4611686018427387905}\nlayers:\n  - Linear: {in_features: \"${n * 4}\", out_features: 2}\n", nil, "integer overflow"},
		{"an override", "refiners: 1\nparams: {p: 2}\nlayers:\n  - Linear: {in_features: \"${p * p}\", out_features: 2}\n", map[string]string{"p": "4294967296"}, "integer overflow"},
		{"a float too large for an int", "refiners: 1\nlayers:\n  - Linear: {in_features: \"${2 ** 2}\", out_features: 2}\n", nil, "RFN-S021"},
		{"a float past int64", "refiners: 1\nlayers:\n  - Linear: {in_features: 1e19, out_features: 2}\n", nil, "want int"},
		{"the parameter count", "refiners: 1\nlayers:\n  - Linear: {in_features: 4294967296, out_features: 4294967296, repeat: 4}\n", nil, "declares more than 9223372036854775807 parameters"},
		{"a parameter's size", "refiners: 1\nlayers:\n  - Linear: {in_features: 4294967296, out_features: 4294967296}\n", nil, "declares more than"},
	} {
		s, err := Parse("o.yaml", []byte(c.src))
		if err == nil {
			_, err = s.Build(c.sets)
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
	}
}

func TestParamCountDoesNotWrap(t *testing.T) {
	big := core.NewChain(core.NewLinear(1<<32, 1<<32, false), core.NewLinear(1<<31, 1<<31, false))
	if n, ok := core.ParamCount(big); ok {
		t.Errorf("ParamCount = %d, ok; want an overflow", n)
	}
	if n := core.CountParams(big); n != math.MaxInt64 {
		t.Errorf("CountParams = %d, want math.MaxInt64 (saturated)", n)
	}
	small := core.NewChain(core.NewLinear(3, 2, true))
	if n, ok := core.ParamCount(small); !ok || n != 8 {
		t.Errorf("ParamCount = %d, %v; want 8", n, ok)
	}
}

func TestBlockRecursionIsNamed(t *testing.T) {
	for _, c := range []struct {
		name, src string
		want      string // "" builds
	}{
		{"a block in itself", "refiners: 1\nblocks:\n  R: {layers: [R]}\nlayers: [R]\n",
			"RFN-S042 block R is recursive: it contains itself with the same parameters (it has none)"},
		{"two blocks in each other", "refiners: 1\nblocks:\n  A: {params: {k: 1}, layers: [Identity, {B: {k: \"${k}\"}}]}\n  B: {params: {k: 1}, layers: [{A: {k: \"${k}\"}}]}\nlayers: [A]\n",
			"block A is recursive: it contains itself with the same parameters (k=1)"},
		{"a recursion that stops", "refiners: 1\nblocks:\n  R: {params: {n: 1}, layers: [Identity, {R: {n: \"${n-1}\", repeat: \"${n > 0}\"}}]}\nlayers: [{R: {n: 100}}]\n", ""},
		{"a recursion that does not stop", "refiners: 1\nblocks:\n  R: {params: {n: 1}, layers: [{R: {n: \"${n+1}\"}}]}\nlayers: [R]\n",
			"the spec builds more than 100000 layers (block R recurses"},
	} {
		s, err := Parse("r.yaml", []byte(c.src))
		if err == nil {
			_, err = s.Build(nil)
		}
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
	}
}
