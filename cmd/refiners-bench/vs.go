package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/spec"
	"github.com/refiners-go/refiners/specs"
)

// The vs-refiners mode puts one model at a time side by side with
// Refiners 0.4.0 on the same full-size random weights (the sd15 modes'
// files) and the same seeded inputs: time to a ready model (build + load),
// forward seconds and peak RSS, each side in a fresh child process
// (-mode vs-go, conformance/bench_models.py), interleaved and repeated
// (Go first on even repeats, Refiners first on odd ones) so that the
// load of a shared machine falls on both. It prints medians, the spread
// (min–max) and the ratios Go/Refiners as a Markdown table.

// vsModel is one benchmarked model: its spec, weights and input.
type vsModel struct {
	name, title, spec, file, prefix string
	forwards                        int // default forwards per child
}

var vsModels = []vsModel{
	{"unet", "SD 1.5 UNet, latents 2×4×%[1]d×%[1]d (one CFG step)", "sd15_unet.yaml", "unet.safetensors", "", 1},
	{"vae", "VAE decoder, 1×4×%[1]d×%[1]d → %[2]d²", "sd15_vae_decoder.yaml", "autoencoder.safetensors", "Decoder.", 1},
	{"clip", "CLIP-L text encoder, 2×77 tokens", "clip_text.yaml", "text_encoder.safetensors", "", 3},
}

// vsResult is a child's BENCH line.
type vsResult struct {
	Side        string    `json:"side"`
	Ready       float64   `json:"ready_seconds"`
	Forwards    []float64 `json:"forward_seconds"`
	OutAbsMean  float64   `json:"out_abs_mean"`
	PeakRSS     int64     `json:"peak_rss_bytes"`
	Threads     string    `json:"threads"`
	Layout      string    `json:"layout,omitempty"`
	Activations int64     `json:"activation_bytes,omitempty"` // Go: core.Call.EstimatePeak
	WeightBytes int64     `json:"weight_bytes,omitempty"`     // Go: the loaded parameters
}

// forward is the steady forward time: the median after the first when
// there are several (the first pays one-time set-up), else the first.
func (r *vsResult) forward() float64 { return steadyStep(r.Forwards) }

// vsOptions are the vs-refiners flags.
type vsOptions struct {
	dir, python, script, dtype string
	models                     []string
	repeats, forwards, latent  int
	channelsLast               bool
	device                     string
}

func runVs(o vsOptions) error {
	if err := ensureSD15Weights(o.dir); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	fmt.Printf("refiners-bench vs-refiners: weights %s, %s on %s, latents %d², %d repeats, OMP_NUM_THREADS=%s\n", o.dir, o.dtype, o.device, o.latent, o.repeats, os.Getenv("OMP_NUM_THREADS"))
	type row struct {
		m       vsModel
		go_, py []*vsResult
	}
	var rows []row
	for _, name := range o.models {
		i := slices.IndexFunc(vsModels, func(m vsModel) bool { return m.name == name })
		if i < 0 {
			return fmt.Errorf("unknown model %q (want unet, vae or clip)", name)
		}
		m := vsModels[i]
		forwards := m.forwards
		if o.forwards > 0 {
			forwards = o.forwards
		}
		r := row{m: m}
		for rep := range o.repeats {
			goArgs := []string{"-mode", "vs-go", "-vs-model", m.name, "-sd15-dir", o.dir, "-dtype", o.dtype, "-forwards", fmt.Sprint(forwards),
				"-latent", fmt.Sprint(o.latent), "-device", o.device}
			if o.channelsLast {
				goArgs = append(goArgs, "-channels-last")
			}
			pyArgs := []string{o.script, "--dir", o.dir, "--model", m.name, "--dtype", o.dtype, "--forwards", fmt.Sprint(forwards),
				"--latent", fmt.Sprint(o.latent), "--device", o.device}
			sides := []func() error{
				func() error {
					res, err := vsChild(self, goArgs...)
					r.go_ = append(r.go_, res)
					return err
				},
				func() error {
					res, err := vsChild(o.python, pyArgs...)
					r.py = append(r.py, res)
					return err
				},
			}
			if rep%2 == 1 {
				slices.Reverse(sides)
			}
			for _, side := range sides {
				if err := side(); err != nil {
					return fmt.Errorf("%s: %w", m.name, err)
				}
			}
			g, p := r.go_[len(r.go_)-1], r.py[len(r.py)-1]
			fmt.Printf("  %s repeat %d: forward %.2f / %.2f s, ready %.2f / %.2f s, peak RSS %.2f / %.2f GB, out mean|x| %.6g / %.6g\n",
				m.name, rep+1, g.forward(), p.forward(), g.Ready, p.Ready, gb(g.PeakRSS), gb(p.PeakRSS), g.OutAbsMean, p.OutAbsMean)
			if g.Activations > 0 {
				fmt.Printf("    Go peak RSS = %.2f × (weights %.2f GB + estimated activations %.2f GB)\n",
					float64(g.PeakRSS)/float64(g.WeightBytes+g.Activations), gb(g.WeightBytes), gb(g.Activations))
			}
		}
		rows = append(rows, r)
	}
	fmt.Printf("\nGo / Refiners 0.4.0 (same libtorch 2.1.2, %s on %s, latents %d², OMP_NUM_THREADS=%s, %d interleaved repeats: median (min–max))\n\n",
		o.dtype, o.device, o.latent, os.Getenv("OMP_NUM_THREADS"), o.repeats)
	fmt.Println("| model, input | forward Go / Refiners (ratio) | time to ready (ratio) | peak RSS, GB (ratio) | weights |")
	fmt.Println("|---|---|---|---|---|")
	for _, r := range rows {
		fwd := func(rs []*vsResult) []float64 { return collect(rs, func(x *vsResult) float64 { return x.forward() }) }
		rdy := func(rs []*vsResult) []float64 { return collect(rs, func(x *vsResult) float64 { return x.Ready }) }
		rss := func(rs []*vsResult) []float64 { return collect(rs, func(x *vsResult) float64 { return gb(x.PeakRSS) }) }
		st, _ := os.Stat(filepath.Join(o.dir, r.m.file))
		var size float64
		if st != nil {
			size = float64(st.Size()) / 1e9
		}
		title := r.m.title
		if strings.Contains(title, "%") {
			title = fmt.Sprintf(title, o.latent, 8*o.latent)
		}
		fmt.Printf("| %s | %s / %s (%.2f) | %s / %s (%.3f) | %s / %s (%.2f) | %.2f GB file |\n", title,
			spread(fwd(r.go_), "s"), spread(fwd(r.py), "s"), median(fwd(r.go_))/median(fwd(r.py)),
			spread(rdy(r.go_), "s"), spread(rdy(r.py), "s"), median(rdy(r.go_))/median(rdy(r.py)),
			spread(rss(r.go_), ""), spread(rss(r.py), ""), median(rss(r.go_))/median(rss(r.py)), size)
	}
	fmt.Println("\n(targets: forward ≤ 0.8, time to ready ≤ 0.3, peak RSS ≤ 0.6; the spread is the shared machine's noise)")
	return nil
}

func gb(b int64) float64 { return float64(b) / 1e9 }

func collect(rs []*vsResult, f func(*vsResult) float64) []float64 {
	out := make([]float64, len(rs))
	for i, r := range rs {
		out[i] = f(r)
	}
	return out
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// spread prints "median (min–max)", or the single value.
func spread(xs []float64, unit string) string {
	if unit != "" {
		unit = " " + unit
	}
	if len(xs) == 1 {
		return fmt.Sprintf("%.2f%s", xs[0], unit)
	}
	return fmt.Sprintf("%.2f%s (%.2f–%.2f)", median(xs), unit, slices.Min(xs), slices.Max(xs))
}

// vsChild runs one side and parses its BENCH line.
func vsChild(name string, args ...string) (*vsResult, error) {
	cmd := exec.Command(name, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if js, ok := strings.CutPrefix(line, "BENCH "); ok {
			res := &vsResult{}
			if err := json.Unmarshal([]byte(js), res); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			if len(res.Forwards) == 0 {
				return nil, fmt.Errorf("%s: no forward timed", name)
			}
			return res, nil
		}
	}
	return nil, fmt.Errorf("%s printed no BENCH line:\n%s", name, out)
}

// ensureSD15Weights writes the random weights (in a child) if missing.
func ensureSD15Weights(dir string) error {
	for _, f := range sd15Files {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			fmt.Printf("writing full-size random weights to %s (once) ...\n", dir)
			self, err := os.Executable()
			if err != nil {
				return err
			}
			cmd := exec.Command(self, "-mode", "sd15-weights", "-sd15-dir", dir)
			cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("writing weights: %w", err)
			}
			return nil
		}
	}
	return nil
}

// vsTokens are the token ids both sides feed the text encoder: the start
// token, then a fixed walk through the vocabulary (bench_models.py's tokens).
func vsTokens(batch, length int) []int64 {
	ids := make([]int64, 0, batch*length)
	for b := range batch {
		ids = append(ids, 49406)
		for i := 1; i < length; i++ {
			ids = append(ids, int64((i*7919+b*13)%49406))
		}
	}
	return ids
}

// runVsGo is the Go side: build and load one model, run it forward.
func runVsGo(dir, name, dtype, device string, forwards, latent int, channelsLast, nhwcWeights bool) error {
	i := slices.IndexFunc(vsModels, func(m vsModel) bool { return m.name == name })
	if i < 0 {
		return fmt.Errorf("unknown model %q", name)
	}
	m := vsModels[i]
	dt, err := tensor.ParseDType(dtype)
	if err != nil {
		return err
	}
	dev, err := tensor.ParseDevice(device)
	if err != nil {
		return err
	}
	l := int64(latent)
	res := vsResult{Side: "go", Threads: os.Getenv("OMP_NUM_THREADS"), Layout: "contiguous"}
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
		start := time.Now()
		sp, err := spec.LoadFS(specs.FS, m.spec)
		if err != nil {
			return err
		}
		model, err := sp.Build(nil)
		if err != nil {
			return err
		}
		f, err := weights.Open(filepath.Join(dir, m.file))
		if err != nil {
			return err
		}
		if dt != tensor.Float32 {
			if err := core.ToDType(s, model, dt); err != nil {
				return err
			}
		}
		if _, err := core.LoadState(s, model, f, core.LoadOptions{Strict: true, Prefix: m.prefix, Device: dev}); err != nil {
			return err
		}
		f.Close() // the weights keep the mapping alive
		defer core.ReleaseParams(model)
		if channelsLast && nhwcWeights {
			// Convolution weights (every 4-d parameter) to NHWC: copies.
			for _, e := range core.StateDict(model) {
				if v := *e.Value; v.Dim() == 4 {
					*e.Value = s.Escape(s.ChannelsLast(v))
					v.Drop()
				}
			}
			if err := s.Err(); err != nil {
				return err
			}
		}
		if channelsLast {
			res.Layout = "channels-last"
			if !nhwcWeights {
				res.Layout += " (inputs only)"
			}
		}
		res.Ready = time.Since(start).Seconds()
		call := core.Call{}
		var x *tensor.Tensor
		switch m.name {
		case "unet":
			x = s.ToDType(s.Randn(1, tensor.Float32, 2, 4, l, l), dt)
			call.Contexts = core.Contexts{
				"diffusion":             {"timestep": s.To(s.FromInt64([]int64{999}, 1), dev)},
				"cross_attention_block": {"clip_text_embedding": s.To(s.ToDType(s.Randn(2, tensor.Float32, 2, 77, 768), dt), dev)},
			}
		case "vae":
			x = s.ToDType(s.Randn(3, tensor.Float32, 1, 4, l, l), dt)
		case "clip":
			x = s.FromInt64(vsTokens(2, 77), 2, 77)
		}
		x = s.To(x, dev)
		if channelsLast && x.Valid() && x.Dim() == 4 {
			x = s.ChannelsLast(x)
		}
		if err := s.Err(); err != nil {
			return err
		}
		for _, e := range core.StateDict(model) {
			res.WeightBytes += (*e.Value).Numel() * int64((*e.Value).DType().Size())
		}
		if dev == tensor.CPU {
			if res.Activations, err = call.EstimatePeak(s, model, x); err != nil {
				return err
			}
		}
		for range forwards {
			c := s.Child()
			t := time.Now()
			out, err := call.Forward(c, model, x)
			if err != nil {
				c.Close()
				return err
			}
			// Reading a value back waits for a device to finish.
			res.OutAbsMean = c.Item(c.Mean(c.Abs(c.ToDType(out[0], tensor.Float32)), false))
			res.Forwards = append(res.Forwards, time.Since(t).Seconds())
			c.Close()
		}
		return s.Err()
	})
	if err != nil {
		return err
	}
	res.PeakRSS = peakRSS()
	js, _ := json.Marshal(res)
	fmt.Printf("BENCH %s\n", js)
	return nil
}
