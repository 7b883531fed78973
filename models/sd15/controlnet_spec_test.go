package sd15_test

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core"
	_ "github.com/refiners-go/refiners/models/sd15"
	"github.com/refiners-go/refiners/spec"
)

// TestControlnetSpecKeys builds specs/sd15_controlnet.yaml at full size and
// checks its state dict, keys in order and shapes, against the ControlNet
// name table of the converter (convert/data/sd15_controlnet.json, generated
// from Refiners 0.4.0's Controlnet).
func TestControlnetSpecKeys(t *testing.T) {
	var table struct {
		Tensors []struct {
			Refiners string  `json:"refiners"`
			Shape    []int64 `json:"shape"`
		} `json:"tensors"`
	}
	raw, err := os.ReadFile("../../convert/data/sd15_controlnet.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &table); err != nil {
		t.Fatal(err)
	}
	sp, err := spec.Load("../../specs/sd15_controlnet.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m, err := sp.Build(map[string]string{"name": "depth"})
	if err != nil {
		t.Fatal(err)
	}
	var want, got []string
	for _, e := range table.Tensors {
		want = append(want, fmt.Sprintf("%s %v", e.Refiners, e.Shape))
	}
	for _, e := range core.StateDict(m) {
		got = append(got, fmt.Sprintf("%s %v", e.Key, e.Shape))
	}
	if !slices.Equal(got, want) {
		for i := range max(len(got), len(want)) {
			g, w := "", ""
			if i < len(got) {
				g = got[i]
			}
			if i < len(want) {
				w = want[i]
			}
			if g != w {
				t.Fatalf("state dict differs from Refiners' Controlnet at entry %d (%d vs %d entries):\n got: %s\nwant: %s", i, len(got), len(want), g, w)
			}
		}
	}
	tree := core.Tree(m, 2)
	for _, s := range []string{"TimestepEncoder", "Slicing", "DownBlocks", "MiddleBlock"} {
		if !strings.Contains(tree, s) {
			t.Errorf("tree print lacks %s:\n%s", s, tree)
		}
	}
}

// TestControlnetContextKeys checks that the ControlNet's name reaches its
// context keys: its own timestep embedding and its condition.
func TestControlnetContextKeys(t *testing.T) {
	sp, err := spec.Load("../../specs/sd15_controlnet.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"canny", "depth"} {
		m, err := sp.Build(map[string]string{"name": name})
		if err != nil {
			t.Fatal(err)
		}
		tree := core.Tree(m, -1)
		for _, want := range []string{
			"SetContext(context=range_adapter, key=timestep_embedding_" + name + ")",
			"UseContext(context=range_adapter, key=timestep_embedding_" + name + ")",
			"UseContext(context=controlnet, key=condition_" + name + ")",
		} {
			if !strings.Contains(tree, want) {
				t.Errorf("name %s: tree print lacks %s", name, want)
			}
		}
		if strings.Contains(tree, "key=timestep_embedding)") {
			t.Errorf("name %s: a layer still uses the U-Net's timestep embedding", name)
		}
	}
}
