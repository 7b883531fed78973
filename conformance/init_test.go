package conformance

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/spec"
)

// initSpec is generate_init.py's model.
const initSpec = `refiners: 1
layers:
  - Conv2d: {in_channels: 3, out_channels: 8, kernel_size: 3, padding: 1}
  - GroupNorm: {channels: 8, num_groups: 2}
  - SiLU
  - ConvTranspose2d: {in_channels: 8, out_channels: 4, kernel_size: 2, stride: 2}
  - Flatten: {start_dim: 1}
  - Linear: {in_features: 1024, out_features: 10}
  - LayerNorm: {normalized_shape: 10}
  - Residual: [Parameter: {dims: [10]}]
  - Chain:
      - Linear: {in_features: 10, out_features: 20, bias: false}
      - Embedding: {num_embeddings: 20, embedding_dim: 6}
`

// TestInitLikeTorch: core.InitLikeTorch (refinersd init) gives a model,
// seed for seed, the parameters PyTorch gives the same Refiners model after
// torch.manual_seed, bit for bit, under the CPU kernel the vectors were
// written with (testdata/init/<capability>.safetensors).
func TestInitLikeTorch(t *testing.T) {
	capability, err := activeCapability()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", "init", capability+".safetensors")
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("no init vectors for the kernel in use (%s): run conformance/generate_init.py on this machine (%v)", capability, err)
	}
	f, err := weights.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s, err := spec.Parse("init.yaml", []byte(initSpec))
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.Build(nil)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, e := range core.StateDict(m) {
		keys = append(keys, e.Key)
	}
	for _, seed := range []uint64{0, 7} {
		err := tensor.Run(context.Background(), func(sc *tensor.Scope) error {
			if err := core.InitLikeTorch(sc, m, seed); err != nil {
				return err
			}
			defer core.ReleaseParams(m)
			prefix := fmt.Sprintf("seed%d.", seed)
			var want []string
			for _, k := range f.Keys() {
				if after, ok := strings.CutPrefix(k, prefix); ok {
					want = append(want, after)
				}
			}
			slices.Sort(want)
			got := slices.Sorted(slices.Values(keys))
			if !slices.Equal(got, want) {
				t.Fatalf("seed %d: model keys %v, reference keys %v", seed, got, want)
			}
			for _, e := range core.StateDict(m) {
				d := ExactDiff(sc, *e.Value, f.Load(sc, prefix+e.Key))
				if !bitExact(d) {
					t.Errorf("seed %d, %s: not PyTorch's values (max |diff| %g over %d values)", seed, e.Key, d.MaxAbs, d.Total)
				}
			}
			return sc.Err()
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}
