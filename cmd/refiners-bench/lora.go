package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/refiners-go/refiners/adapt"
	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	_ "github.com/refiners-go/refiners/models/all" // the SD 1.5 U-Net's layers
	"github.com/refiners-go/refiners/sdk"
	"github.com/refiners-go/refiners/spec"
)

// runLora measures LoRA application on the full-size SD 1.5 UNet: a rank-r
// LoRA on every attention projection (the layers community LoRAs target),
// applied at run time (inject/eject) and fused (fuse/unfuse), and RSS after
// many apply/remove cycles against after a few.
func runLora(specPath, weightsPath string, rank int64, cycles int, limit float64) (bool, error) {
	s, err := spec.Load(specPath)
	if err != nil {
		return false, err
	}
	m, err := s.Build(nil)
	if err != nil {
		return false, err
	}
	var targets []string
	var shapes [][2]int64
	m.Walk(func(x core.Module, _ *core.Chain, path string) bool {
		if l, ok := x.(*core.Linear); ok && strings.Contains(path, "Attention") {
			targets = append(targets, path)
			shapes = append(shapes, [2]int64{l.In, l.Out})
		}
		return true
	})
	dir, err := os.MkdirTemp("", "refiners-lora-bench-")
	if err != nil {
		return false, err
	}
	defer os.RemoveAll(dir)
	loraPath := filepath.Join(dir, "lora.safetensors")
	pass := true
	err = tensor.Run(context.Background(), func(sc *tensor.Scope) error {
		start := time.Now()
		if weightsPath != "" {
			f, err := weights.Open(weightsPath)
			if err != nil {
				return err
			}
			_, err = core.LoadState(sc, m, f, core.LoadOptions{Strict: true, Prefix: "param."})
			f.Close()
			if err != nil {
				return err
			}
		} else if err := core.InitRandom(sc, m, 1); err != nil {
			return err
		}
		defer core.ReleaseParams(m)
		fmt.Printf("SD 1.5 UNet: %d parameter tensors loaded in %v\n", len(core.StateDict(m)), time.Since(start).Round(time.Millisecond))

		// A rank-r LoRA file for every attention projection.
		lora := map[string]*tensor.Tensor{}
		plan := &sdk.Plan{Report: &sdk.Report{}}
		for i, target := range targets {
			in, out := shapes[i][0], shapes[i][1]
			down, up := core.NewParameter(rank, in), core.NewParameter(out, rank)
			if err := core.InitRandom(sc, down, int64(2*i)); err != nil {
				return err
			}
			if err := core.InitRandom(sc, up, int64(2*i+1)); err != nil {
				return err
			}
			key := fmt.Sprintf("lora.%d", i)
			lora[key+".down"], lora[key+".up"] = down.Weight, up.Weight
			branch := map[string]any{"type": "LinearLora", "name": "bench", "in_features": in, "out_features": out, "rank": rank, "scale": 0.8}
			plan.Patches = append(plan.Patches, sdk.Patch{Target: target, Kind: "lora", Branch: branch, Bindings: []sdk.Binding{
				{File: "f", Key: key + ".down", Param: "Linear_1.weight"}, {File: "f", Key: key + ".up", Param: "Linear_2.weight"}}})
		}
		if err := weights.Save(sc, loraPath, lora, nil); err != nil {
			return err
		}
		for _, t := range lora {
			t.Drop()
		}
		f, err := weights.Open(loraPath)
		if err != nil {
			return err
		}
		defer f.Close()
		files := map[string]*weights.File{"f": f}
		st, _ := os.Stat(loraPath)
		fmt.Printf("LoRA: rank %d on %d attention projections, %.1f MiB\n\n", rank, len(targets), float64(st.Size())/(1<<20))

		timeIt := func(label string, n int, apply func() (func() error, error)) error {
			var on, off time.Duration
			for i := 0; i < n; i++ {
				t0 := time.Now()
				undo, err := apply()
				if err != nil {
					return err
				}
				t1 := time.Now()
				if err := undo(); err != nil {
					return err
				}
				on, off = on+t1.Sub(t0), off+time.Since(t1)
			}
			fmt.Printf("  %-32s apply %8.1f ms   remove %8.1f ms   (mean of %d)\n", label,
				float64(on.Microseconds())/1000/float64(n), float64(off.Microseconds())/1000/float64(n), n)
			return nil
		}
		runtimeMode := func() (func() error, error) {
			c := sc.Child()
			a, err := adapt.Apply(c, m, plan, files)
			if err != nil {
				c.Close()
				return nil, err
			}
			return func() error { defer c.Close(); return a.Eject() }, nil
		}
		fusedMode := func() (func() error, error) {
			c := sc.Child()
			fu, err := adapt.Fuse(c, m, plan, files)
			if err != nil {
				c.Close()
				return nil, err
			}
			return func() error { defer c.Close(); return fu.Unfuse() }, nil
		}
		fmt.Println("time (runtime: inject/eject adapters; fused: merge into weights, restore originals)")
		if err := timeIt("runtime", 10, runtimeMode); err != nil {
			return err
		}
		if err := timeIt("fused", 10, fusedMode); err != nil {
			return err
		}

		settledRSS := func() int64 {
			runtime.GC()
			debug.FreeOSMemory()
			b, _ := rss()
			return b
		}
		cycle := func(n int) error {
			for i := 0; i < n; i++ {
				undo, err := runtimeMode()
				if err != nil {
					return err
				}
				if err := undo(); err != nil {
					return err
				}
			}
			return nil
		}
		if err := cycle(10); err != nil {
			return err
		}
		after10 := settledRSS()
		if err := cycle(cycles - 10); err != nil {
			return err
		}
		afterN := settledRSS()
		growth := 100 * float64(afterN-after10) / float64(after10)
		verdict := "PASS"
		if growth > limit {
			verdict, pass = "FAIL", false
		}
		fmt.Printf("\nRSS after 10 apply/remove cycles %s, after %d %s: %+.2f%% — %s (limit %.0f%%)\n",
			mib(after10), cycles, mib(afterN), growth, verdict, limit)
		return sc.Err()
	})
	return pass, err
}
