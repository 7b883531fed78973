package spec

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
)

// sparseWeights writes a safetensors file with the given header (as
// generate_headers.py writes it) whose data is a hole: the file has its full
// size (3.2 GiB for the SD 1.5 UNet) but takes no disk, and reading any
// tensor would read zeros. plan must only read the header.
func sparseWeights(t testing.TB, headerJSON string) string {
	raw, err := os.ReadFile(headerJSON)
	if err != nil {
		t.Fatal(err)
	}
	var h map[string]struct {
		DataOffsets [2]int64 `json:"data_offsets"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		t.Fatal(err)
	}
	var end int64
	for _, v := range h {
		end = max(end, v.DataOffsets[1])
	}
	path := filepath.Join(t.TempDir(), "weights.safetensors")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(raw)))
	if _, err := f.Write(append(n[:], raw...)); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(8 + int64(len(raw)) + end); err != nil {
		t.Fatal(err)
	}
	return path
}

func planUNet(t testing.TB, path string) *PlanReport {
	header, _, err := weights.ReadHeader(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Load("../specs/sd15_unet.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.Build(nil)
	if err != nil {
		t.Fatal(err)
	}
	return Plan(m, header, "")
}

// TestPlanFullUNet checks the full-size SD 1.5 UNet spec against the real
// (Refiners) weights layout, reading the header alone: every key and shape
// must match, and no tensor may be allocated.
func TestPlanFullUNet(t *testing.T) {
	path := sparseWeights(t, "../conformance/testdata/headers/sd15_unet.json")
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	tensors := tensor.Created()
	r := planUNet(t, path)
	runtime.ReadMemStats(&after)
	if errs := r.Errors(path); len(errs) > 0 {
		t.Fatalf("plan found %d problems:\n%v", len(errs), errs)
	}
	if n := tensor.Created() - tensors; n != 0 {
		t.Errorf("plan allocated %d tensors, want none", n)
	}
	t.Logf("%d parameter tensors, %d parameters; Go heap allocated during plan: %.1f MiB (the weights are %.2f GiB)",
		len(r.Rows), r.Params, float64(after.TotalAlloc-before.TotalAlloc)/(1<<20), float64(r.Params*4)/(1<<30))
}

// BenchmarkPlanFullUNet times reading the header, building the full-size
// UNet from its spec and checking every parameter.
func BenchmarkPlanFullUNet(b *testing.B) {
	path := sparseWeights(b, "../conformance/testdata/headers/sd15_unet.json")
	b.ReportAllocs()
	for b.Loop() {
		if r := planUNet(b, path); !r.OK() {
			b.Fatal("plan failed")
		}
	}
}
