package spec

import (
	"strings"
	"testing"
	"testing/fstest"
)

func TestLoadFSReadsImportsInsideTheSet(t *testing.T) {
	lib := "refiners: 1\nblocks:\n  Block:\n    layers:\n      - Linear: {in_features: 2, out_features: 2}\n"
	fsys := fstest.MapFS{
		"models/main.yaml":   {Data: []byte("refiners: 1\nimports: [../lib/blocks.yaml]\nlayers:\n  - Block\n")},
		"lib/blocks.yaml":    {Data: []byte(lib)},
		"models/escape.yaml": {Data: []byte("refiners: 1\nimports: [../../etc/blocks.yaml]\nlayers:\n  - Block\n")},
		"models/abs.yaml":    {Data: []byte("refiners: 1\nimports: [/lib/blocks.yaml]\nlayers:\n  - Block\n")},
	}
	s, err := LoadFS(fsys, "models/main.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(s.Files, ","); got != "models/main.yaml,lib/blocks.yaml" {
		t.Errorf("Files = %s", got)
	}
	if _, err := s.Build(nil); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"models/escape.yaml", "models/abs.yaml"} {
		_, err := LoadFS(fsys, name)
		if err == nil || !strings.Contains(err.Error(), "leaves the spec's file set") || !strings.Contains(err.Error(), name+":2:") {
			t.Errorf("%s: error = %v; want the import refused at its position", name, err)
		}
	}
}

func TestLoadListsFiles(t *testing.T) {
	s, err := Load("../specs/sd15_unet.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Files) != 2 || !strings.HasSuffix(s.Files[1], "sd15_unet_blocks.yaml") {
		t.Errorf("Files = %v", s.Files)
	}
}
