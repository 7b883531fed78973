package spec

import (
	"fmt"
	"io/fs"
	"strings"
	"sync/atomic"
	"testing"
	"testing/fstest"
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
