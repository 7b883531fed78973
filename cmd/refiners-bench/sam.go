package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/daemon"
	"github.com/refiners-go/refiners/models/sam/predict"
	"github.com/refiners-go/refiners/models/sd15/pipeline"
)

// The sam mode compares the SAM predictor (models/sam/predict, what
// `refinersd segment` and POST /v1/segment run) with Refiners'
// SegmentAnything on the same random weights (Refiners' layout, written by
// conformance/bench_sam.py --write at the chosen size): the image
// embedding and the per-prompt decoding (prompt encoders, mask decoder,
// upscaling), timed in alternating blocks — Go, then Refiners in a child
// process kept alive between blocks — so that drift on a shared machine
// hits both sides alike. Then the daemon's throughput for a run of
// prompts on one image (the first computes the embedding, the others hit
// the cache).

// pyBench is the Refiners side, driven over its stdin/stdout.
type pyBench struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startPyBench(python, script, weightsPath, image, size string) (*pyBench, error) {
	cmd := exec.Command(python, script, "--weights", weightsPath, "--image", image, "--size", size)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &pyBench{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	if !p.out.Scan() || !strings.HasPrefix(p.out.Text(), "READY") {
		p.close()
		return nil, fmt.Errorf("%s did not start: %q", script, p.out.Text())
	}
	fmt.Printf("  refiners side: %s\n", p.out.Text())
	return p, nil
}

// time runs one command and returns the seconds the child measured.
func (p *pyBench) time(cmd string) (float64, error) {
	if _, err := fmt.Fprintln(p.in, cmd); err != nil {
		return 0, err
	}
	if !p.out.Scan() {
		return 0, fmt.Errorf("refiners side: no answer to %s", cmd)
	}
	v, ok := strings.CutPrefix(p.out.Text(), "T ")
	if !ok {
		return 0, fmt.Errorf("refiners side: %s", p.out.Text())
	}
	return strconv.ParseFloat(v, 64)
}

func (p *pyBench) close() {
	fmt.Fprintln(p.in, "quit")
	p.in.Close()
	p.cmd.Wait()
}

// runSAM is the sam mode.
func runSAM(dir, size, python, script, imagePath string, blocks, prompts, daemonPrompts int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	weightsPath := filepath.Join(dir, "sam_"+size+".safetensors")
	if _, err := os.Stat(weightsPath); err != nil {
		fmt.Printf("writing random %s weights (Refiners' layout) to %s ...\n", size, weightsPath)
		cmd := exec.Command(python, script, "--weights", weightsPath, "--size", size, "--write")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("writing weights: %w", err)
		}
	}
	img, err := pipeline.ReadImage(imagePath)
	if err != nil {
		return err
	}
	rgb := pipeline.ToRGB(img)
	prompt := predict.Prompt{Points: []predict.Point{{X: float64(rgb.Width) * 0.4, Y: float64(rgb.Height) * 0.6, Foreground: true}}}

	py, err := startPyBench(python, script, weightsPath, imagePath, size)
	if err != nil {
		return err
	}
	defer py.close()
	fmt.Printf("SAM %s, image %dx%d, %d blocks of 1 embedding + %d prompts per side (OMP_NUM_THREADS=%q)\n",
		size, rgb.Width, rgb.Height, blocks, prompts, os.Getenv("OMP_NUM_THREADS"))
	var goEmbed, pyEmbed, goDecode, pyDecode []float64
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
		m, err := predict.Load(s, predict.Config{Weights: weightsPath})
		if err != nil {
			return err
		}
		defer m.Release()
		for range blocks {
			start := time.Now()
			e, err := m.Embed(s, rgb)
			if err != nil {
				return err
			}
			goEmbed = append(goEmbed, time.Since(start).Seconds())
			t, err := py.time("embed")
			if err != nil {
				return err
			}
			pyEmbed = append(pyEmbed, t)
			for range prompts {
				start := time.Now()
				if _, err := m.Predict(s, e, prompt); err != nil {
					return err
				}
				goDecode = append(goDecode, time.Since(start).Seconds())
			}
			for range prompts {
				t, err := py.time("decode")
				if err != nil {
					return err
				}
				pyDecode = append(pyDecode, t)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	// The first block pays one-time set-up on both sides: medians of the rest.
	steady := func(v []float64, per int) []float64 {
		if len(v) > per {
			return v[per:]
		}
		return v
	}
	ge, pe := median(steady(goEmbed, 1)), median(steady(pyEmbed, 1))
	gd, pd := median(steady(goDecode, prompts)), median(steady(pyDecode, prompts))
	fmt.Printf("%-28s %10s %10s %8s\n", "", "go (s)", "refiners", "go/ref")
	fmt.Printf("%-28s %10.4f %10.4f %8.2f\n", "image embedding", ge, pe, ge/pe)
	fmt.Printf("%-28s %10.4f %10.4f %8.2f\n", "one prompt (decoder + post)", gd, pd, gd/pd)
	py.close()

	// The daemon: daemonPrompts prompts on one image, one at a time.
	tmp, err := os.MkdirTemp("", "refiners-bench-sam-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	cfg := daemon.Defaults()
	cfg.Store, cfg.PluginsDir = filepath.Join(tmp, "store"), filepath.Join(tmp, "plugins")
	cfg.Segmenters = map[string]daemon.SegmenterConfig{"sam": {Weights: weightsPath}}
	d, err := daemon.New(cfg, hclog.NewNullLogger())
	if err != nil {
		return err
	}
	defer d.Close()
	srv := httptest.NewServer(d.Handler())
	defer srv.Close()
	raw, err := os.ReadFile(imagePath)
	if err != nil {
		return err
	}
	post := func(body map[string]any) (*daemon.SegmentResponse, error) {
		b, _ := json.Marshal(body)
		resp, err := http.Post(srv.URL+"/v1/segment", "application/json", bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return nil, fmt.Errorf("POST /v1/segment: %d %s", resp.StatusCode, out)
		}
		var res daemon.SegmentResponse
		return &res, json.Unmarshal(out, &res)
	}
	// Load the model first, on another image, so that loading is not timed.
	if _, err := post(map[string]any{"model": "sam", "image": base64.StdEncoding.EncodeToString(encodeGray()), "points": []map[string]any{{"x": 1, "y": 1}}}); err != nil {
		return err
	}
	start := time.Now()
	first, err := post(map[string]any{"model": "sam", "image": base64.StdEncoding.EncodeToString(raw), "points": []map[string]any{{"x": 10, "y": 10}}})
	if err != nil {
		return err
	}
	firstSec := time.Since(start).Seconds()
	rest := time.Now()
	for i := 1; i < daemonPrompts; i++ {
		res, err := post(map[string]any{"model": "sam", "image_digest": first.ImageDigest,
			"points": []map[string]any{{"x": 5 + i, "y": 7 + i}}, "low_res_logits": false})
		if err != nil {
			return err
		}
		if !res.Cached {
			return fmt.Errorf("prompt %d on the same image missed the cache", i)
		}
	}
	restSec := time.Since(rest).Seconds()
	total := firstSec + restSec
	fmt.Printf("daemon: %d prompts on one image in %.3fs (%.2f prompts/s): first %.3fs (embedding), then %.4fs per prompt; "+
		"without the cache about %.3fs (%.1f× longer)\n", daemonPrompts, total, float64(daemonPrompts)/total, firstSec,
		restSec/float64(daemonPrompts-1), float64(daemonPrompts)*firstSec, float64(daemonPrompts)*firstSec/total)
	return nil
}

// encodeGray is a small PNG for the warm-up request.
func encodeGray() []byte {
	img := pipeline.NewRGB(8, 8)
	b, _ := img.EncodePNG()
	return b
}
