package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/internal/atomicfile"
	"github.com/refiners-go/refiners/models/sam/predict"
	"github.com/refiners-go/refiners/models/sd15/pipeline"
)

const segmentUsage = `usage: refinersd segment --weights SAM --image IN.png --point X,Y[,fg|bg]... [--box X0,Y0,X1,Y1]
         [--mask-input LOW.safetensors] --output MASK.png [--all-masks] [--json] [flags]

Segment Anything, as Refiners' SegmentAnything.predict: points (foreground by
default) and/or a box in the image's pixels give three masks; the one with
the highest IoU prediction is written (--all-masks: all three). See
docs/sam.md.

`

// pointFlags collects --point X,Y[,fg|bg].
type pointFlags []predict.Point

func (p *pointFlags) String() string { return fmt.Sprint(*p) }

func (p *pointFlags) Set(v string) error {
	parts := strings.Split(v, ",")
	if len(parts) != 2 && len(parts) != 3 {
		return fmt.Errorf("want X,Y or X,Y,fg|bg, got %q", v)
	}
	xy, err := parseFloats(parts[:2])
	if err != nil {
		return fmt.Errorf("%q: %w", v, err)
	}
	pt := predict.Point{X: xy[0], Y: xy[1], Foreground: true}
	if len(parts) == 3 {
		switch strings.TrimSpace(parts[2]) {
		case "fg":
		case "bg":
			pt.Foreground = false
		default:
			return fmt.Errorf("%q: the label is fg or bg, got %q", v, parts[2])
		}
	}
	*p = append(*p, pt)
	return nil
}

func parseFloats(parts []string) ([]float64, error) {
	out := make([]float64, len(parts))
	for i, s := range parts {
		v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, fmt.Errorf("%q is not a finite number", s)
		}
		out[i] = v
	}
	return out, nil
}

// segmentResult is the --json output.
type segmentResult struct {
	Width   int            `json:"width"`
	Height  int            `json:"height"`
	Best    int            `json:"best"`
	Masks   []segmentMask  `json:"masks"`
	LowRes  string         `json:"low_res_output,omitempty"`
	Seconds map[string]any `json:"seconds"`
}

type segmentMask struct {
	Index  int     `json:"index"`
	Score  float32 `json:"score"`
	Path   string  `json:"path,omitempty"`
	Pixels int     `json:"pixels"`
}

// segment is `refinersd segment`.
func segment(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("segment", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), segmentUsage)
		fs.PrintDefaults()
	}
	weightsPath := fs.String("weights", "", "SAM weights: Refiners' segment-anything-h.safetensors layout or an official sam_vit_{h,l,b}_*.pth")
	imagePath := fs.String("image", "", "PNG or JPEG to segment")
	var points pointFlags
	fs.Var(&points, "point", "X,Y[,fg|bg]: a point in the image's pixels, foreground unless bg (repeatable)")
	boxFlag := fs.String("box", "", "X0,Y0,X1,Y1: a box in the image's pixels (top-left, bottom-right)")
	maskInput := fs.String("mask-input", "", "low-res mask logits to refine: a safetensors file with \"mask\" [1, 1, S, S] (as --low-res-output writes)")
	output := fs.String("output", "", "PNG to write: the best mask, white inside (with --all-masks: OUT-1.png ... OUT-3.png)")
	allMasks := fs.Bool("all-masks", false, "write the three masks, not only the best")
	lowResOut := fs.String("low-res-output", "", "also write the low-res logits (safetensors: mask = the best one, low_res = all, iou) for --mask-input")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	device := fs.String("device", "cpu", "cpu, cuda or cuda:N")
	heads := fs.Int("decoder-heads", 8, "attention heads of the mask decoder (in no shape: 8 in SAM)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("segment: unexpected argument %q (flags only)", fs.Arg(0))
	}
	check := func(flag, path string) error {
		if err := fileExists(flag, path); err != nil {
			return fmt.Errorf("segment: %s", strings.TrimPrefix(err.Error(), "generate: "))
		}
		return nil
	}
	switch {
	case *weightsPath == "":
		return errors.New("segment: --weights is required")
	case *imagePath == "":
		return errors.New("segment: --image is required")
	case *output == "":
		return errors.New("segment: --output is required")
	case len(points) == 0 && *boxFlag == "":
		return errors.New("segment: give at least one --point or a --box")
	case *heads < 1:
		return fmt.Errorf("segment: --decoder-heads %d: want at least 1", *heads)
	}
	for _, f := range []struct{ flag, path string }{{"--weights", *weightsPath}, {"--image", *imagePath}, {"--mask-input", *maskInput}} {
		if f.path != "" {
			if err := check(f.flag, f.path); err != nil {
				return err
			}
		}
	}
	for _, o := range []struct{ flag, path, ext string }{{"--output", *output, ".png"}, {"--low-res-output", *lowResOut, ".safetensors"}} {
		if o.path == "" {
			continue
		}
		if ext := strings.ToLower(filepath.Ext(o.path)); ext != o.ext {
			return fmt.Errorf("segment: %s %s: want a %s name", o.flag, o.path, o.ext)
		}
		if st, err := os.Stat(filepath.Dir(o.path)); err != nil || !st.IsDir() {
			return fmt.Errorf("segment: %s %s: the directory %s does not exist", o.flag, o.path, filepath.Dir(o.path))
		}
	}
	prompt := predict.Prompt{Points: points}
	if *boxFlag != "" {
		v, err := parseFloats(strings.Split(*boxFlag, ","))
		if err != nil || len(v) != 4 {
			return fmt.Errorf("segment: --box %q: want X0,Y0,X1,Y1 (four numbers)", *boxFlag)
		}
		prompt.Box = &predict.Box{X0: v[0], Y0: v[1], X1: v[2], Y1: v[3]}
	}
	if *maskInput != "" {
		m, err := readMaskInput(*maskInput)
		if err != nil {
			return fmt.Errorf("segment: --mask-input: %w", err)
		}
		prompt.Mask = m
	}
	img, err := pipeline.ReadImage(*imagePath)
	if err != nil {
		return fmt.Errorf("segment: --image: %w", err)
	}
	rgb := pipeline.ToRGB(img)
	dev, err := tensor.ParseDevice(*device)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var p *predict.Prediction
	var lowSide int64
	seconds := map[string]any{}
	err = tensor.Run(ctx, func(s *tensor.Scope) error {
		start := time.Now()
		m, err := predict.Load(s, predict.Config{Weights: *weightsPath, Device: dev, DecoderHeads: *heads})
		if err != nil {
			return err
		}
		defer m.Release()
		lowSide = m.LowResSide()
		seconds["load"] = round3(time.Since(start).Seconds())
		start = time.Now()
		e, err := m.Embed(s, rgb)
		if err != nil {
			return err
		}
		seconds["embedding"] = round3(time.Since(start).Seconds())
		start = time.Now()
		if p, err = m.Predict(s, e, prompt); err != nil {
			return err
		}
		seconds["decoder"] = round3(time.Since(start).Seconds())
		return nil
	})
	if err != nil {
		return fmt.Errorf("segment: %w", err)
	}

	// Encode everything first, then write: a failure writes nothing.
	best := p.Best()
	indices := []int{best}
	paths := []string{*output}
	if *allMasks {
		indices = []int{0, 1, 2}[:len(p.Masks)]
		paths = outputPaths(*output, len(p.Masks))
	}
	files := map[string][]byte{}
	res := segmentResult{Width: p.Width, Height: p.Height, Best: best, Seconds: seconds}
	for n, i := range indices {
		b, pixels, err := p.MaskPNG(i)
		if err != nil {
			return fmt.Errorf("segment: %w", err)
		}
		files[paths[n]] = b
		res.Masks = append(res.Masks, segmentMask{Index: i, Score: p.IoU[i], Path: paths[n], Pixels: pixels})
	}
	if *lowResOut != "" {
		var buf bytes.Buffer
		all := make([]float32, 0, len(p.LowRes)*int(lowSide*lowSide))
		for _, l := range p.LowRes {
			all = append(all, l...)
		}
		n := int64(len(p.LowRes))
		if err := weights.Encode(&buf, map[string]weights.Raw{
			"mask":    {DType: tensor.Float32, Shape: []int64{1, 1, lowSide, lowSide}, Data: weights.Float32Bytes(p.LowRes[best])},
			"low_res": {DType: tensor.Float32, Shape: []int64{1, n, lowSide, lowSide}, Data: weights.Float32Bytes(all)},
			"iou":     {DType: tensor.Float32, Shape: []int64{1, n}, Data: weights.Float32Bytes(p.IoU)},
		}, map[string]string{"best": strconv.Itoa(best)}); err != nil {
			return fmt.Errorf("segment: %w", err)
		}
		files[*lowResOut] = buf.Bytes()
		res.LowRes = *lowResOut
	}
	for _, path := range append(paths[:len(indices):len(indices)], *lowResOut) {
		if path == "" {
			continue
		}
		if err := atomicfile.WriteFile(path, files[path], 0o644); err != nil {
			return fmt.Errorf("segment: %w", err)
		}
	}
	if *asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	for _, m := range res.Masks {
		mark := ""
		if m.Index == best {
			mark = " (best)"
		}
		fmt.Fprintf(out, "%s: mask %d, IoU prediction %.4f, %d pixels%s\n", m.Path, m.Index, m.Score, m.Pixels, mark)
	}
	return nil
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// readMaskInput reads low-res logits from a safetensors file: its "mask"
// tensor, or its only tensor, [S, S], [1, S, S] or [1, 1, S, S].
func readMaskInput(path string) ([]float32, error) {
	f, err := weights.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	key := "mask"
	if _, ok := f.Info(key); !ok {
		keys := f.Keys()
		if len(keys) != 1 {
			return nil, fmt.Errorf("%s has no \"mask\" tensor and %d others (want one)", path, len(keys))
		}
		key = keys[0]
	}
	info, _ := f.Info(key)
	shape := info.Shape
	for len(shape) > 2 && shape[0] == 1 {
		shape = shape[1:]
	}
	if len(shape) != 2 || shape[0] != shape[1] {
		return nil, fmt.Errorf("%s[%s] has shape %v, want [1, 1, S, S] low-res logits", path, key, info.Shape)
	}
	v, _, err := f.Float64s(key)
	if err != nil {
		return nil, err
	}
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = float32(x)
	}
	return out, nil
}
