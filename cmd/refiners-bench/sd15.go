package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/models/sd15/pipeline"
	"github.com/refiners-go/refiners/spec"
	"github.com/refiners-go/refiners/specs"
)

// The sd15 mode compares the Stable Diffusion 1.5 pipeline of models/sd15
// (what `refinersd generate` runs) with Refiners' StableDiffusion_1 on the
// same full-size random weights: seconds per denoising step at
// size×size with classifier-free guidance (a U-Net batch of 2), and the
// peak RSS of each process. Each side runs in a child process of its own
// (this binary with -mode sd15-go, conformance/bench_pipeline.py), one
// after the other, so that neither's memory or threads disturb the other.

// sd15Files are the weight files of the benchmark, in Refiners' layout.
var sd15Files = []string{"unet.safetensors", "text_encoder.safetensors", "autoencoder.safetensors"}

// benchResult is what a child prints on its last line, after "BENCH ".
type benchResult struct {
	Side        string    `json:"side"`
	LoadSeconds float64   `json:"load_seconds"`
	StepSeconds []float64 `json:"step_seconds"`
	TextSeconds float64   `json:"text_seconds"`
	DecodeSecs  float64   `json:"decode_seconds"`
	PeakRSS     int64     `json:"peak_rss_bytes"`
	Threads     string    `json:"threads"`
}

// runSD15 is the parent: it writes the random weights if missing, runs
// both sides and prints the comparison.
func runSD15(dir, python, script string, steps, size int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	missing := false
	for _, f := range sd15Files {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			missing = true
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if missing {
		fmt.Printf("writing full-size random weights to %s ...\n", dir)
		cmd := exec.Command(self, "-mode", "sd15-weights", "-sd15-dir", dir)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("writing weights: %w", err)
		}
	}
	common := []string{"-sd15-dir", dir, "-sd15-steps", fmt.Sprint(steps), "-sd15-size", fmt.Sprint(size)}
	fmt.Printf("Go pipeline (models/sd15), %d steps at %dx%d ...\n", steps, size, size)
	goRes, err := child(self, append([]string{"-mode", "sd15-go"}, common...)...)
	if err != nil {
		return fmt.Errorf("go side: %w", err)
	}
	fmt.Printf("Refiners' StableDiffusion_1 (%s), %d steps at %dx%d ...\n", python, steps, size, size)
	pyRes, err := child(python, script, "--dir", dir, "--steps", fmt.Sprint(steps), "--size", fmt.Sprint(size))
	if err != nil {
		return fmt.Errorf("python side: %w", err)
	}
	printSD15(goRes, pyRes, steps, size)
	return nil
}

// child runs a side and parses its BENCH line; its other output is shown.
func child(name string, args ...string) (*benchResult, error) {
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s: %w\n%s", name, err, out.String())
	}
	var res *benchResult
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		line := sc.Text()
		if js, ok := strings.CutPrefix(line, "BENCH "); ok {
			res = &benchResult{}
			if err := json.Unmarshal([]byte(js), res); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			continue
		}
		fmt.Println("  " + line)
	}
	if res == nil {
		return nil, fmt.Errorf("%s printed no BENCH line", name)
	}
	return res, nil
}

// median of the steps after the first (which pays one-time set-up), or
// the first when it is the only one.
func steadyStep(steps []float64) float64 {
	if len(steps) == 1 {
		return steps[0]
	}
	rest := slices.Clone(steps[1:])
	slices.Sort(rest)
	n := len(rest)
	if n%2 == 1 {
		return rest[n/2]
	}
	return (rest[n/2-1] + rest[n/2]) / 2
}

func printSD15(g, p *benchResult, steps, size int) {
	gb := func(b int64) string { return fmt.Sprintf("%.2f GB", float64(b)/1e9) }
	fmt.Printf("\nSD 1.5 pipeline, %dx%d, CFG (U-Net batch 2), %d steps, threads %s (Go) / %s (torch)\n", size, size, steps, g.Threads, p.Threads)
	fmt.Printf("%-30s %-14s %-14s %s\n", "", "Go", "Refiners", "Go/Refiners")
	row := func(name string, a, b float64, unit string) {
		fmt.Printf("%-30s %-14s %-14s %.2f\n", name, fmt.Sprintf("%.2f %s", a, unit), fmt.Sprintf("%.2f %s", b, unit), a/b)
	}
	mean := func(xs []float64) float64 {
		t := 0.0
		for _, x := range xs {
			t += x
		}
		return t / float64(len(xs))
	}
	row("step (median after the first)", steadyStep(g.StepSeconds), steadyStep(p.StepSeconds), "s")
	row("step (mean of all)", mean(g.StepSeconds), mean(p.StepSeconds), "s")
	row("first step", g.StepSeconds[0], p.StepSeconds[0], "s")
	row("before the steps (text, noise)", g.TextSeconds, p.TextSeconds, "s")
	row("decode", g.DecodeSecs, p.DecodeSecs, "s")
	row("load", g.LoadSeconds, p.LoadSeconds, "s")
	fmt.Printf("%-30s %-14s %-14s %.2f\n", "peak RSS", gb(g.PeakRSS), gb(p.PeakRSS), float64(g.PeakRSS)/float64(p.PeakRSS))
	fmt.Printf("steps, s: Go %.2f, Refiners %.2f\n", g.StepSeconds, p.StepSeconds)
	fmt.Println("(targets: step ratio ≤ 0.9, peak RSS ratio ≤ 1; on a shared machine, run twice and read the ratios, not the seconds)")
}

// peakRSS is the process's high-water resident set (getrusage's maxrss).
func peakRSS() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return -1
	}
	return ru.Maxrss * 1024
}

// runSD15Go is the Go side: load, then one generation, timing each part.
func runSD15Go(dir string, steps, size int) error {
	cfg := pipeline.Config{UNet: filepath.Join(dir, sd15Files[0]), TextEncoder: filepath.Join(dir, sd15Files[1]), Autoencoder: filepath.Join(dir, sd15Files[2])}
	res := benchResult{Side: "go", Threads: os.Getenv("OMP_NUM_THREADS")}
	err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
		start := time.Now()
		m, err := pipeline.Load(s, cfg)
		if err != nil {
			return err
		}
		defer m.Release()
		res.LoadSeconds = time.Since(start).Seconds()
		// Elapsed counts from the start of the first step; the wall clock
		// at each callback gives the set-up before it (text embedding,
		// noise) and the decoding after the last.
		var elapsed, walls []time.Duration
		begin := time.Now()
		req := pipeline.Request{Prompt: "a photograph of an astronaut riding a horse", Steps: steps, Seed: 2, Width: size, Height: size,
			Progress: func(p pipeline.Progress) {
				walls = append(walls, time.Since(begin))
				elapsed = append(elapsed, p.Elapsed)
			}}
		out, err := m.Generate(context.Background(), s, req)
		if err != nil {
			return err
		}
		total := time.Since(begin)
		if len(elapsed) != steps || len(out.Images) != 1 {
			return fmt.Errorf("%d progress calls, %d images", len(elapsed), len(out.Images))
		}
		prev := time.Duration(0)
		for _, e := range elapsed {
			res.StepSeconds = append(res.StepSeconds, (e - prev).Seconds())
			prev = e
		}
		res.TextSeconds = (walls[0] - elapsed[0]).Seconds()
		res.DecodeSecs = (total - walls[len(walls)-1]).Seconds()
		return nil
	})
	if err != nil {
		return err
	}
	res.PeakRSS = peakRSS()
	js, _ := json.Marshal(res)
	fmt.Printf("BENCH %s\n", js)
	return nil
}

// writeSD15Weights writes random full-size weights in Refiners' layout,
// one model at a time (InitRandom: uniform in ±1/√fan-in).
func writeSD15Weights(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return tensor.Run(context.Background(), func(s *tensor.Scope) error {
		build := func(name string) (*core.Chain, error) {
			sp, err := spec.LoadFS(specs.FS, name)
			if err != nil {
				return nil, err
			}
			return sp.Build(nil)
		}
		for i, part := range []struct {
			file  string
			specs []string
			pre   []string
		}{
			{sd15Files[0], []string{"sd15_unet.yaml"}, []string{""}},
			{sd15Files[1], []string{"clip_text.yaml"}, []string{""}},
			{sd15Files[2], []string{"sd15_vae_encoder.yaml", "sd15_vae_decoder.yaml"}, []string{"Encoder.", "Decoder."}},
		} {
			c := s.Child()
			named := map[string]*tensor.Tensor{}
			var models []*core.Chain
			for j, name := range part.specs {
				m, err := build(name)
				if err != nil {
					c.Close()
					return err
				}
				if err := core.InitRandom(c, m, int64(10*i+j)); err != nil {
					c.Close()
					return err
				}
				models = append(models, m)
				for _, e := range core.StateDict(m) {
					named[part.pre[j]+e.Key] = *e.Value
				}
			}
			path := filepath.Join(dir, part.file)
			err := weights.Save(c, path, named, map[string]string{"refiners-go": "random weights (refiners-bench -mode sd15-weights)"})
			for _, m := range models {
				core.ReleaseParams(m)
			}
			c.Close()
			if err != nil {
				return err
			}
			st, _ := os.Stat(path)
			fmt.Printf("  %s: %d tensors, %.2f GB\n", path, len(named), float64(st.Size())/1e9)
		}
		return nil
	})
}
