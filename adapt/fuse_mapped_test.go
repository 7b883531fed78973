package adapt

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/sdk"
)

// Weights loaded from a file view its read-only mapping. Fusing must then
// write new tensors (a write into a view would fault), never the file's
// pages; unfusing puts the very views back, bit for bit, and the file is
// unchanged throughout.
func TestFuseOverMappedWeightsCopiesOnWrite(t *testing.T) {
	cases := []struct {
		name   string
		model  func() *core.Chain
		target string
		branch map[string]any
		down   []int64
		up     []int64
	}{
		{"linear", func() *core.Chain { return core.NewChain(core.NewLinear(6, 5, true)) }, "Linear",
			map[string]any{"type": "LinearLora", "name": "a", "in_features": 6, "out_features": 5, "rank": 3, "scale": 0.75},
			[]int64{3, 6}, []int64{5, 3}},
		{"conv", func() *core.Chain { return core.NewChain(core.NewConv2d(3, 4, 3, core.ConvOptions{Padding: 1})) }, "Conv2d",
			map[string]any{"type": "Conv2dLora", "name": "c", "in_channels": 3, "out_channels": 4, "rank": 2, "scale": 1.5},
			[]int64{2, 3, 1, 1}, []int64{4, 2, 3, 3}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			modelPath, loraPath := filepath.Join(dir, "model.safetensors"), filepath.Join(dir, "lora.safetensors")
			err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
				src := c.model()
				if err := core.InitRandom(s, src, int64(i)); err != nil {
					return err
				}
				err := core.SaveState(s, src, modelPath, nil)
				core.ReleaseParams(src)
				if err != nil {
					return err
				}
				rnd := func(shape []int64, seed int64) *tensor.Tensor {
					l := core.NewParameter(shape...)
					core.InitRandom(s, l, seed)
					return s.ShallowCopy(l.Weight)
				}
				if err := weights.Save(s, loraPath, map[string]*tensor.Tensor{"down": rnd(c.down, 10), "up": rnd(c.up, 11)}, nil); err != nil {
					return err
				}
				fileBefore, err := os.ReadFile(modelPath)
				if err != nil {
					return err
				}

				m := c.model()
				defer core.ReleaseParams(m)
				mf, err := weights.Open(modelPath)
				if err != nil {
					return err
				}
				defer mf.Close()
				if _, err := core.LoadState(s, m, mf, core.LoadOptions{Strict: true}); err != nil {
					return err
				}
				for _, e := range core.StateDict(m) {
					if !mf.Views(e.Key) {
						t.Fatalf("%s is not loaded as a view of the file", e.Key)
					}
				}
				lf, err := weights.Open(loraPath)
				if err != nil {
					return err
				}
				defer lf.Close()
				slots := map[string]*tensor.Tensor{}
				_, before := print(s, m)
				for _, e := range core.StateDict(m) {
					slots[e.Key] = *e.Value
				}
				plan := &sdk.Plan{Report: &sdk.Report{}, Patches: []sdk.Patch{{Target: c.target, Kind: "lora", Branch: c.branch,
					Bindings: []sdk.Binding{{File: "f", Key: "down", Param: firstParam(0, c.branch)}, {File: "f", Key: "up", Param: firstParam(1, c.branch)}}}}}
				fused, err := Fuse(s, m, plan, map[string]*weights.File{"f": lf})
				if err != nil {
					return err
				}
				_, during := print(s, m)
				if w := c.target + ".weight"; len(before[w]) == 0 || bytes.Equal(during[w], before[w]) {
					t.Errorf("fusing did not change %s", w)
				}
				if err := fused.Unfuse(); err != nil {
					return err
				}
				_, after := print(s, m)
				for _, e := range core.StateDict(m) {
					if *e.Value != slots[e.Key] {
						t.Errorf("%s: unfuse did not put the original (viewing) tensor back", e.Key)
					}
					if !bytes.Equal(after[e.Key], before[e.Key]) {
						t.Errorf("%s differs after unfuse", e.Key)
					}
				}
				fileAfter, err := os.ReadFile(modelPath)
				if err != nil {
					return err
				}
				if !bytes.Equal(fileBefore, fileAfter) {
					t.Error("the weights file changed")
				}
				return s.Err()
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}
