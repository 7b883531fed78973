package spec

import (
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core"
)

func TestViTSpecBuilds(t *testing.T) {
	s, err := Load("../specs/vit.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.Build(map[string]string{"num_layers": "2", "embedding_dim": "8", "num_heads": "2", "image_size": "32", "patch_size": "8"})
	if err != nil {
		t.Fatal(err)
	}
	keys := core.StateDict(m)
	if len(keys) == 0 || keys[0].Key != "Conv2d.weight" {
		t.Fatalf("keys start %v", keys[:1])
	}
	if got := m.Keys(); strings.Join(got, ",") != "Conv2d,Reshape_1,Residual,Chain_1,Chain_2,Reshape_2" {
		t.Errorf("children %v", got)
	}
	t.Log("\n" + m.String())
}

func TestPluginLayerTypes(t *testing.T) {
	src := []byte("refiners: 1\nlayers:\n  - demo/Scaled: {factor: 3}\n")
	s, err := Parse("model.yaml", src)
	if err != nil {
		t.Fatal(err)
	}
	// Before the plugin's library is added, the type is a missing plugin.
	if _, err := s.Build(nil); err == nil || !strings.Contains(err.Error(), `provided by plugin "demo", which is not installed`) {
		t.Errorf("without the library: %v", err)
	}
	lib := []byte("refiners: 1\nblocks:\n  Scaled:\n    params: {factor: 2}\n    layers:\n      - Multiply: {scale: \"${factor}\"}\n")
	if err := s.AddLibrary("demo", "demo-plugin", lib); err != nil {
		t.Fatal(err)
	}
	m, err := s.Build(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := core.Tree(m, -1); !strings.Contains(got, "(CHAIN) Scaled()") || !strings.Contains(got, "Multiply(scale=3.0)") {
		t.Errorf("tree:\n%s", got)
	}
	bad := []byte("refiners: 1\nblocks:\n  Scaled:\n    layer: []\n")
	if err := s.AddLibrary("demo2", "bad-plugin", bad); err == nil || !strings.Contains(err.Error(), "bad-plugin:4:5: RFN-S003") {
		t.Errorf("bad library: %v", err)
	}
}
