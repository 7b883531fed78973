package spec

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
)

// peakRSS is the process's peak resident memory (VmHWM), reset first when
// asked.
func peakRSS(reset bool) int64 {
	if reset {
		os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
	}
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(rest), "%d", &kb)
			return kb << 10
		}
	}
	return 0
}

// BenchmarkEstimatePeakAgainstRSS compares core.Call.EstimatePeak with the
// real pass's peak RSS growth on a ViT (dim 256, 4 layers, 1,024 tokens,
// batch 16, random weights). Measured on the CPU: estimate 180 MB; peak
// RSS growth 268 MB on the process's first pass (1.49 times: allocator and
// op workspace), 185 MB on later ones (1.02, the allocator reusing memory).
func BenchmarkEstimatePeakAgainstRSS(b *testing.B) {
	sp, err := Load("../specs/vit.yaml")
	if err != nil {
		b.Fatal(err)
	}
	m, err := sp.Build(map[string]string{"embedding_dim": "256", "patch_size": "8", "image_size": "256", "num_layers": "4", "num_heads": "8"})
	if err != nil {
		b.Fatal(err)
	}
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
		if err := core.InitRandom(s, m, 1); err != nil {
			return err
		}
		defer core.ReleaseParams(m)
		x := s.Zeros(tensor.Float32, 16, 3, 256, 256)
		var est, growth int64
		for b.Loop() {
			if est, err = (core.Call{}).EstimatePeak(s, m, x); err != nil {
				return err
			}
			base := peakRSS(true)
			out, err := core.Forward(s, m, x)
			if err != nil {
				return err
			}
			growth = peakRSS(false) - base
			for _, t := range out {
				t.Drop()
			}
		}
		b.ReportMetric(float64(est)/1e6, "estimate-MB")
		b.ReportMetric(float64(growth)/1e6, "rss-growth-MB")
		b.ReportMetric(float64(growth)/float64(est), "rss/estimate")
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}
