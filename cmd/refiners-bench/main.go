// Command refiners-bench measures the tensor layer's cost in one process run:
//
//   - per-op overhead: N raw gotch calls against N calls through
//     tensor.Scope, interleaved in alternating blocks so that drift on a
//     shared machine hits both sides alike; it prints ns/op and scope/raw;
//   - memory: RSS after a warm-up and after many small ops through the
//     tensor layer, which must stay flat (growth within -limit percent);
//   - -mode convert: time and peak RSS of converting a full SD 1.5
//     checkpoint, against its largest component (convert.go);
//   - -mode sd15: seconds per denoising step and peak RSS of the SD 1.5
//     pipeline (models/sd15) against Refiners' StableDiffusion_1 on the
//     same full-size random weights, each side in a child process
//     (sd15.go); -mode sd15-weights only writes those weights;
//   - -mode sam: the SAM predictor's image embedding and per-prompt
//     decoding against Refiners' SegmentAnything on the same random
//     weights, interleaved, and the daemon's throughput for prompts on
//     one image (sam.go).
//
// It exits with status 1 when an RSS check fails. Timings are figures to
// read, never pass/fail: compare the ratios, not absolute numbers.
//
// libtorch's intra-op thread pool follows OMP_NUM_THREADS (the Makefile
// exports 2); this command sets nothing and only prints it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/sugarme/gotch/ts"
)

func main() {
	n := flag.Int("n", 200000, "small ops per side for timing, and for the RSS check")
	blocks := flag.Int("blocks", 10, "alternating blocks per side for timing")
	warmup := flag.Int("warmup", 20000, "ops before the first RSS read")
	iters := flag.Int("module-iters", 1000, "iterations of the linear -> gelu -> add sequence")
	limit := flag.Float64("limit", 2, "largest RSS growth accepted, in percent")
	mode := flag.String("mode", "ops", "ops: the tensor layer; lora: LoRA apply/remove on the full SD 1.5 UNet; convert: refinersd convert on a full SD 1.5 checkpoint; "+
		"sd15: the SD 1.5 pipeline against Refiners' (sd15-weights, sd15-go: its parts); sam: the SAM predictor against Refiners' and the daemon's throughput")
	convertSrc := flag.String("convert-src", "conformance/testdata/full/convert/sd15_bench.safetensors", "convert mode: the checkpoint (make bench-convert writes one)")
	convertDTypes := flag.String("convert-dtypes", ",float16", "convert mode: output dtypes to run, comma-separated (empty: the source's)")
	convertLimit := flag.Float64("convert-limit", 1.2, "convert mode: largest peak RSS accepted, as a multiple of the largest component")
	sd15Dir := flag.String("sd15-dir", filepath.Join(os.TempDir(), "refiners-sd15-random"), "sd15 modes: weights directory (random full-size weights are written there if missing)")
	sd15Steps := flag.Int("sd15-steps", 3, "sd15 modes: denoising steps per side")
	sd15Size := flag.Int("sd15-size", 512, "sd15 modes: image width and height")
	python := flag.String("python", "conformance/.venv/bin/python", "sd15 mode: the reference environment's python")
	script := flag.String("sd15-script", "conformance/bench_pipeline.py", "sd15 mode: the reference side's script")
	unetSpec := flag.String("unet-spec", "specs/sd15_unet.yaml", "lora mode: the UNet spec")
	unetWeights := flag.String("unet-weights", "", "lora mode: UNet weights (param.<key>, e.g. conformance/testdata/full/sd15_unet_full.safetensors); random if empty")
	rank := flag.Int64("rank", 32, "lora mode: LoRA rank")
	cycles := flag.Int("cycles", 1000, "lora mode: apply/remove cycles for the RSS check")
	samSize := flag.String("sam-size", "vit_b", "sam mode: vit_h, vit_l, vit_b or tiny")
	samDir := flag.String("sam-dir", filepath.Join(os.TempDir(), "refiners-sam-random"), "sam mode: weights directory (random weights are written there if missing)")
	samScript := flag.String("sam-script", "conformance/bench_sam.py", "sam mode: the reference side's script")
	samImage := flag.String("sam-image", "conformance/testdata/sam/predict_wide.png", "sam mode: the image")
	samBlocks := flag.Int("sam-blocks", 3, "sam mode: alternating blocks (1 embedding + -sam-prompts prompts per side each)")
	samPrompts := flag.Int("sam-prompts", 5, "sam mode: prompts per block and side")
	samDaemon := flag.Int("sam-daemon-prompts", 20, "sam mode: prompts on one image through the daemon")
	vsModelsFlag := flag.String("vs-models", "unet,vae,clip", "vs-refiners mode: models to compare, comma-separated (unet, vae, clip)")
	vsModel := flag.String("vs-model", "", "vs-go mode: the one model to run")
	vsRepeats := flag.Int("repeats", 3, "vs-refiners mode: interleaved repeats per model and side")
	forwards := flag.Int("forwards", 0, "vs modes: forwards per child (0: 1 for unet and vae, 3 for clip)")
	dtype := flag.String("dtype", "float32", "vs modes: weights and inputs dtype (float32, bfloat16, float16)")
	latent := flag.Int("latent", 64, "vs modes: latent side for the UNet and VAE decoder inputs (64: 512² images)")
	device := flag.String("device", "cpu", "vs modes: cpu, cuda or cuda:N")
	channelsLast := flag.Bool("channels-last", false, "vs modes: Go side runs convolutions channels-last (NHWC)")
	nhwcWeights := flag.Bool("nhwc-weights", true, "vs-go mode with -channels-last: convert the convolution weights too (else only the input is channels-last)")
	cpuProfile := flag.String("cpuprofile", "", "vs-go mode: write a CPU profile of the forwards to this file (go tool pprof)")
	vsScript := flag.String("vs-script", "conformance/bench_models.py", "vs-refiners mode: the reference side's script")
	flag.Parse()
	if *mode == "sam" {
		if err := runSAM(*samDir, *samSize, *python, *samScript, *samImage, *samBlocks, *samPrompts, *samDaemon); err != nil {
			fmt.Fprintln(os.Stderr, "refiners-bench:", err)
			os.Exit(1)
		}
		return
	}
	switch *mode {
	case "vs-refiners", "vs-go":
		var err error
		if *mode == "vs-go" {
			err = withProfile(*cpuProfile, func() error {
				return runVsGo(*sd15Dir, *vsModel, *dtype, *device, max(*forwards, 1), *latent, *channelsLast, *nhwcWeights)
			})
		} else if *vsRepeats < 1 {
			err = fmt.Errorf("-repeats must be at least 1")
		} else {
			err = runVs(vsOptions{dir: *sd15Dir, python: *python, script: *vsScript, dtype: *dtype, models: strings.Split(*vsModelsFlag, ","),
				repeats: *vsRepeats, forwards: *forwards, latent: *latent, channelsLast: *channelsLast, device: *device})
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "refiners-bench:", err)
			os.Exit(1)
		}
		return
	}
	var sd15Err error
	switch *mode {
	case "sd15":
		sd15Err = runSD15(*sd15Dir, *python, *script, *sd15Steps, *sd15Size)
	case "sd15-go":
		sd15Err = runSD15Go(*sd15Dir, *sd15Steps, *sd15Size)
	case "sd15-weights":
		sd15Err = writeSD15Weights(*sd15Dir)
	}
	if strings.HasPrefix(*mode, "sd15") {
		if sd15Err != nil {
			fmt.Fprintln(os.Stderr, "refiners-bench:", sd15Err)
			os.Exit(1)
		}
		return
	}
	if *mode == "convert" {
		pass, err := runConvert(*convertSrc, strings.Split(*convertDTypes, ","), *convertLimit)
		if err != nil {
			fmt.Fprintln(os.Stderr, "refiners-bench:", err)
			os.Exit(1)
		}
		if !pass {
			os.Exit(1)
		}
		return
	}
	if *mode == "lora" {
		pass, err := runLora(*unetSpec, *unetWeights, *rank, *cycles, *limit)
		if err != nil {
			fmt.Fprintln(os.Stderr, "refiners-bench:", err)
			os.Exit(1)
		}
		if !pass {
			os.Exit(1)
		}
		return
	}
	if *n <= 0 || *blocks <= 0 || *n < *blocks || *warmup < 0 || *iters <= 0 {
		fmt.Fprintln(os.Stderr, "refiners-bench: -n, -blocks and -module-iters must be positive, -n >= -blocks")
		os.Exit(2)
	}
	pass, err := run(*n, *blocks, *warmup, *iters, *limit)
	if err != nil {
		fmt.Fprintln(os.Stderr, "refiners-bench:", err)
		os.Exit(1)
	}
	if !pass {
		os.Exit(1)
	}
}

func run(n, blocks, warmup, iters int, limit float64) (bool, error) {
	omp := os.Getenv("OMP_NUM_THREADS")
	if omp == "" {
		omp = "unset (libtorch default)"
	}
	fmt.Printf("refiners-bench: GOMAXPROCS=%d OMP_NUM_THREADS=%s n=%d blocks=%d\n\n",
		runtime.GOMAXPROCS(0), omp, n, blocks)

	// The raw side runs on this goroutine, pinned, with autograd off, as
	// tensor.Run's workers are.
	runtime.LockOSThread()
	if _, err := ts.GradSetEnabled(false); err != nil {
		return false, err
	}

	fmt.Println("per-op time (raw gotch vs tensor.Scope; child scope per op)")
	fmt.Printf("  %-30s %10s %10s %7s %13s\n", "op", "raw ns/op", "scope ns/op", "ratio", "block ratios")
	addRow, err := timeOp("add [4]+[4]", n, blocks, addRaw, addScope)
	if err != nil {
		return false, err
	}
	fmt.Println(addRow)
	ln := max(n/10, blocks)
	linRow, err := timeOp(fmt.Sprintf("linear [8,64]x[64,64] (n=%d)", ln), ln, blocks, linearRaw, linearScope)
	if err != nil {
		return false, err
	}
	fmt.Println(linRow)

	fmt.Printf("\nRSS (after runtime.GC + debug.FreeOSMemory; limit %.1f%%)\n", limit)
	fmt.Printf("  %-38s %10s %10s %8s %10s %8s  %s\n", "workload", "RSS warm", "RSS end", "growth", "Go heap +", "gotch", "verdict")
	pass := true
	checks := []struct {
		name      string
		warm, ops int
		body      func(s *tensor.Scope, k int)
	}{
		{fmt.Sprintf("add, child scope per op (%d)", n), warmup, n, addChildLoop},
		{fmt.Sprintf("linear->gelu->add, child/iter (%d)", iters), max(iters/10, 1), iters, moduleLoop},
		{fmt.Sprintf("add+Release, one scope (%d)", n), warmup, n, addReleaseLoop},
	}
	for _, c := range checks {
		r, err := rssCheck(c.warm, c.ops, c.body)
		if err != nil {
			return false, err
		}
		verdict := "ok"
		if r.growth() > limit {
			verdict = "over"
			pass = false
		}
		fmt.Printf("  %-38s %10s %10s %7.2f%% %10s %8s  %s\n", c.name, mib(r.warm), mib(r.end), r.growth(),
			mib(int64(r.heapEnd)-int64(r.heapWarm)), fmt.Sprintf("%d/%d", r.liveWarm, r.liveEnd), verdict)
	}
	fmt.Println("  (Go heap + = HeapAlloc growth; gotch = live gotch tensors, len(ts.ExistingTensors), warm/end)")
	verdict := "PASS"
	if !pass {
		verdict = "FAIL"
	}
	fmt.Printf("\nRSS flat: %s (limit %.0f%%)\n", verdict, limit)
	return pass, nil
}

// --- timing -----------------------------------------------------------------

// side runs k ops and returns how long they took. raw sides run on the
// calling (pinned) goroutine; scope sides inside tensor.Run, timed inside
// the job so the hand-off to the worker is not counted.
type side func(k int) (time.Duration, error)

func timeOp(name string, n, blocks int, raw, scope side) (string, error) {
	per := n / blocks
	// One untimed block each so that allocator and caches are warm.
	if _, err := raw(per); err != nil {
		return "", err
	}
	if _, err := scope(per); err != nil {
		return "", err
	}
	var rawT, scopeT time.Duration
	ratios := make([]float64, 0, blocks)
	for b := 0; b < blocks; b++ {
		var r, s time.Duration
		var err error
		if b%2 == 0 {
			if r, err = raw(per); err == nil {
				s, err = scope(per)
			}
		} else {
			if s, err = scope(per); err == nil {
				r, err = raw(per)
			}
		}
		if err != nil {
			return "", err
		}
		rawT += r
		scopeT += s
		ratios = append(ratios, float64(s)/float64(r))
	}
	slices.Sort(ratios)
	ops := float64(per * blocks)
	rawNs := float64(rawT.Nanoseconds()) / ops
	scopeNs := float64(scopeT.Nanoseconds()) / ops
	spread := fmt.Sprintf("%.2f..%.2f", ratios[0], ratios[len(ratios)-1])
	return fmt.Sprintf("  %-30s %10.0f %10.0f %7.3f %13s", name, rawNs, scopeNs, scopeNs/rawNs, spread), nil
}

func rawInputs(shapes [][]int64) ([]*ts.Tensor, func(), error) {
	var out []*ts.Tensor
	drop := func() {
		for _, t := range out {
			_ = t.Drop()
		}
	}
	for _, shape := range shapes {
		t, err := ts.OfSlice(ramp(int(numel(shape))))
		if err != nil {
			drop()
			return nil, nil, err
		}
		r, err := t.Reshape(shape, true)
		if err != nil {
			drop()
			return nil, nil, err
		}
		out = append(out, r)
	}
	return out, drop, nil
}

func addRaw(k int) (time.Duration, error) {
	in, drop, err := rawInputs([][]int64{{4}, {4}})
	if err != nil {
		return 0, err
	}
	defer drop()
	a, b := in[0], in[1]
	start := time.Now()
	for i := 0; i < k; i++ {
		r, err := a.Add(b, false)
		if err != nil {
			return 0, err
		}
		_ = r.Drop()
	}
	return time.Since(start), nil
}

func linearRaw(k int) (time.Duration, error) {
	in, drop, err := rawInputs([][]int64{{8, 64}, {64, 64}, {64}})
	if err != nil {
		return 0, err
	}
	defer drop()
	x, w, b := in[0], in[1], in[2]
	start := time.Now()
	for i := 0; i < k; i++ {
		r, err := ts.Linear(x, w, b)
		if err != nil {
			return 0, err
		}
		_ = r.Drop()
	}
	return time.Since(start), nil
}

func timed(k int, setup func(s *tensor.Scope) func(s *tensor.Scope)) (time.Duration, error) {
	var d time.Duration
	err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
		step := setup(s)
		if err := s.Err(); err != nil {
			return err
		}
		start := time.Now()
		for i := 0; i < k; i++ {
			step(s)
		}
		d = time.Since(start)
		return s.Err()
	})
	return d, err
}

func addScope(k int) (time.Duration, error) {
	return timed(k, func(s *tensor.Scope) func(*tensor.Scope) {
		a, b := s.FromFloat32(ramp(4), 4), s.FromFloat32(ramp(4), 4)
		return func(s *tensor.Scope) {
			c := s.Child()
			c.Add(a, b)
			c.Close()
		}
	})
}

func linearScope(k int) (time.Duration, error) {
	return timed(k, func(s *tensor.Scope) func(*tensor.Scope) {
		x := s.FromFloat32(ramp(8*64), 8, 64)
		w := s.FromFloat32(ramp(64*64), 64, 64)
		b := s.FromFloat32(ramp(64), 64)
		return func(s *tensor.Scope) {
			c := s.Child()
			c.Linear(x, w, b)
			c.Close()
		}
	})
}

// --- RSS --------------------------------------------------------------------

type rssResult struct {
	warm, end         int64  // RSS
	heapWarm, heapEnd uint64 // Go heap in use (runtime.MemStats.HeapAlloc)
	liveWarm, liveEnd int    // live gotch tensors
}

func (r rssResult) growth() float64 { return 100 * float64(r.end-r.warm) / float64(r.warm) }

// rssCheck runs body for warm steps, reads RSS, runs it for ops more steps
// in the same root scope, and reads RSS again.
func rssCheck(warm, ops int, body func(s *tensor.Scope, k int)) (rssResult, error) {
	var r rssResult
	err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
		body(s, warm)
		if err := s.Err(); err != nil {
			return err
		}
		var err error
		if r.warm, r.heapWarm, err = settledRSS(); err != nil {
			return err
		}
		r.liveWarm = len(ts.ExistingTensors)
		body(s, ops)
		if err := s.Err(); err != nil {
			return err
		}
		if r.end, r.heapEnd, err = settledRSS(); err != nil {
			return err
		}
		r.liveEnd = len(ts.ExistingTensors)
		return nil
	})
	return r, err
}

// inputs are made once per body call; they live in s until the Run ends,
// which only adds a few tensors per call.
func addChildLoop(s *tensor.Scope, k int) {
	a, b := s.FromFloat32(ramp(4), 4), s.FromFloat32(ramp(4), 4)
	for i := 0; i < k; i++ {
		c := s.Child()
		c.Add(a, b)
		c.Close()
	}
}

func addReleaseLoop(s *tensor.Scope, k int) {
	a, b := s.FromFloat32(ramp(4), 4), s.FromFloat32(ramp(4), 4)
	for i := 0; i < k; i++ {
		s.Release(s.Add(a, b))
	}
}

func moduleLoop(s *tensor.Scope, k int) {
	x := s.FromFloat32(ramp(8*64), 8, 64)
	w := s.FromFloat32(ramp(64*64), 64, 64)
	b := s.FromFloat32(ramp(64), 64)
	for i := 0; i < k; i++ {
		c := s.Child()
		h := c.Linear(x, w, b)
		g := c.GeLU(h, "none")
		c.Add(g, x)
		c.Close()
	}
}

// settledRSS collects garbage, returns freed pages to the OS, then reads RSS
// and the Go heap in use.
func settledRSS() (int64, uint64, error) {
	runtime.GC()
	debug.FreeOSMemory()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	r, err := rss()
	return r, m.HeapAlloc, err
}

// rss reads the resident set size from /proc/self/statm (pages).
func rss() (int64, error) {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, fmt.Errorf("unexpected /proc/self/statm: %q", b)
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return 0, err
	}
	return pages * int64(os.Getpagesize()), nil
}

// --- helpers ----------------------------------------------------------------

func ramp(n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(i%17)/17 - 0.5
	}
	return v
}

func numel(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return n
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// withProfile runs f under a CPU profile written to path (none if empty).
// Time spent inside libtorch is attributed to the Go op that called it
// (through runtime.cgocall), so the profile splits a forward by op.
func withProfile(path string, f func() error) error {
	if path == "" {
		return f()
	}
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.StartCPUProfile(out); err != nil {
		out.Close()
		return err
	}
	err = f()
	pprof.StopCPUProfile()
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
