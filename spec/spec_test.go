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
