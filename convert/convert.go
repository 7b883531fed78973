// Package convert turns the weights users have into the keys the specs
// load: diffusers pipeline folders and component folders, the original
// single-file Stable Diffusion 1.5 checkpoints (safetensors or .ckpt), and
// PyTorch pickles (read by package torchfile, which runs nothing).
//
// A source is read as one or more key spaces (a pipeline's component
// folders, or one file). Each is matched against the name tables in data/
// (one per component: U-Net, CLIP text encoder, autoencoder, ControlNet;
// diffusers and original layouts): a component is found when every one of
// its tensors is there. Accounting is strict: every source key must be
// used by a component or ignored by a rule of its layout (a noise
// schedule, the EMA copy), and every target tensor filled, or nothing is
// written. Tensors are renamed and reshaped (the original VAE's 1x1
// attention convolutions become linears) without a copy when the dtype
// stays; outputs are written one tensor at a time from the mapped source,
// atomically, all or none.
package convert

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	_ "github.com/refiners-go/refiners/models/all" // the layers the specs it checks against use
	"github.com/refiners-go/refiners/spec"
	"github.com/refiners-go/refiners/specs"
)

// Version names the converter in every output's metadata.
const Version = "refiners-go convert 1"

// OutputPaths names the file each found component is written to: to
// itself when it ends in .safetensors (then exactly one component must be
// converted), else to/<component>.safetensors.
func OutputPaths(d *Detection, to string) (map[*Found]string, error) {
	out := map[*Found]string{}
	if strings.HasSuffix(to, ".safetensors") {
		if len(d.Found) != 1 {
			return nil, fmt.Errorf("convert: %s holds %d components (%s): name one with --component, or give --to a directory",
				d.Source.Path, len(d.Found), d.components())
		}
		out[d.Found[0]] = to
		return out, nil
	}
	seen := map[string]bool{}
	for _, f := range d.Found {
		if seen[f.Component()] {
			return nil, fmt.Errorf("convert: %s holds two %ss: convert them one at a time (--component and a folder each)", d.Source.Path, f.Component())
		}
		seen[f.Component()] = true
		out[f] = filepath.Join(to, f.Component()+".safetensors")
	}
	return out, nil
}

// Written describes one output file.
type Written struct {
	Component string
	Path      string
	Tensors   int
	DType     tensor.DType
	Metadata  map[string]string
}

// Convert writes each found component to its path. Every output is checked
// against its specs first (every parameter present with its shape), then
// written in full under a temporary name; only when all were written are
// they renamed into place, so a failure leaves no output at all.
func Convert(ctx context.Context, d *Detection, outputs map[*Found]string, o Options) ([]Written, error) {
	var want tensor.DType
	if o.DType != "" {
		dt, err := tensor.ParseDType(o.DType)
		if err != nil || !dt.IsFloat() {
			return nil, fmt.Errorf("convert: --dtype %s: want float32, float16 or bfloat16", o.DType)
		}
		want = dt
	}
	type job struct {
		f       *Found
		path    string
		dtype   tensor.DType
		streams map[string]weights.Stream
		meta    map[string]string
	}
	var jobs []job
	for _, f := range d.Found {
		path, ok := outputs[f]
		if !ok {
			continue
		}
		dt := want
		if o.DType == "" {
			dt = outDType(f.DType)
		}
		if err := CheckSpecs(f); err != nil {
			return nil, err
		}
		meta, err := metadata(d.Source, f, dt)
		if err != nil {
			return nil, err
		}
		jobs = append(jobs, job{f: f, path: path, dtype: dt, meta: meta})
	}
	var written []Written
	err := tensor.Run(ctx, func(s *tensor.Scope) error {
		var pending []*weights.Pending
		discard := func() {
			for _, p := range pending {
				p.Discard()
			}
		}
		for _, j := range jobs {
			streams, err := streamsOf(s, j.f, j.dtype)
			if err != nil {
				discard()
				return err
			}
			p, err := weights.WriteStream(j.path, streams, j.meta)
			if err != nil {
				discard()
				return fmt.Errorf("convert: %s: %w", j.f.Component(), err)
			}
			pending = append(pending, p)
			written = append(written, Written{Component: j.f.Component(), Path: j.path, Tensors: len(streams), DType: j.dtype, Metadata: j.meta})
		}
		for i, p := range pending {
			if err := p.Commit(); err != nil {
				for _, q := range pending[i+1:] {
					q.Discard()
				}
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return written, nil
}

// outDType is the dtype a component keeps by default: its source's, or
// float32 for a float64 source (the tensor layer has no float64).
func outDType(st string) tensor.DType {
	switch st {
	case "F16":
		return tensor.Float16
	case "BF16":
		return tensor.BFloat16
	}
	return tensor.Float32
}

// srcDType reads a source dtype the tensor layer knows.
func srcDType(st string) (tensor.DType, bool) {
	switch st {
	case "F32":
		return tensor.Float32, true
	case "F16":
		return tensor.Float16, true
	case "BF16":
		return tensor.BFloat16, true
	}
	return 0, false
}

// streamsOf prepares the component's output tensors: the source bytes
// themselves when the dtype stays, converted by libtorch one tensor at a
// time otherwise.
func streamsOf(s *tensor.Scope, f *Found, out tensor.DType) (map[string]weights.Stream, error) {
	streams := make(map[string]weights.Stream, len(f.Sources))
	for i, r := range f.Table.Rows {
		src := f.Sources[i]
		shape, err := targetShape(r, f.Layout.Name, src.shape)
		if err != nil {
			return nil, fmt.Errorf("convert: %s: %w", src.key, err)
		}
		in, ok := srcDType(src.dtype)
		if !ok {
			return nil, fmt.Errorf("convert: %s: tensor %s is %s; only float32, float16 and bfloat16 weights are converted", f.Part.label(), src.key, src.dtype)
		}
		read := src.read
		bytes := read
		if in != out {
			bytes = func() ([]byte, func(), error) {
				b, release, err := read()
				if err != nil {
					return nil, nil, err
				}
				c := s.Child()
				defer c.Close()
				t := c.FromBytes(b, in, src.shape...)
				release() // FromBytes copied them
				ob := c.Bytes(c.ToDType(t, out))
				if err := c.Err(); err != nil {
					return nil, nil, fmt.Errorf("%s to %s: %w", src.key, out, err)
				}
				return ob, nil, nil
			}
		}
		streams[r.Refiners] = weights.Stream{DType: out, Shape: shape, Bytes: bytes}
	}
	return streams, nil
}

// metadata is what an output records about where it came from.
func metadata(src *Source, f *Found, dt tensor.DType) (map[string]string, error) {
	digest, err := partDigest(f.Part)
	if err != nil {
		return nil, fmt.Errorf("convert: digest of %s: %w", src.Path, err)
	}
	var files []string
	for _, sf := range f.Part.Files {
		files = append(files, filepath.Base(sf.path))
	}
	params, _ := json.Marshal(f.Params)
	where := src.Path
	if f.Part.Name != "" {
		where = filepath.Join(src.Path, f.Part.Name)
	}
	return map[string]string{
		"converter":     Version,
		"source":        where,
		"source_files":  strings.Join(files, ","),
		"source_digest": digest,
		"component":     f.Component(),
		"layout":        f.Layout.Name,
		"refiners_root": f.Table.RefinersRoot,
		"spec_params":   string(params),
		"dtype":         dt.String(),
	}, nil
}

// partDigest is the sha256 of the part's one file, or, for shards, of
// the lines "<digest> <name>" of its files.
func partDigest(p *Part) (string, error) {
	if len(p.Files) == 1 {
		return p.Files[0].Digest()
	}
	var lines []string
	for _, f := range p.Files {
		d, err := f.Digest()
		if err != nil {
			return "", err
		}
		lines = append(lines, d+" "+filepath.Base(f.path))
	}
	slices.Sort(lines)
	sum := sha256.Sum256([]byte(strings.Join(lines, "\n") + "\n"))
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// CheckSpecs builds each spec that runs the component (with the
// parameters the source implies) and checks the converted tensors against
// it, without reading any tensor data.
func CheckSpecs(f *Found) error {
	header := make([]weights.Info, len(f.Table.Rows))
	for i, r := range f.Table.Rows {
		shape, err := targetShape(r, f.Layout.Name, f.Sources[i].shape)
		if err != nil {
			return fmt.Errorf("convert: %s: %w", f.Sources[i].key, err)
		}
		header[i] = weights.Info{Key: r.Refiners, DType: tensor.Float32, Shape: shape}
	}
	for _, ref := range f.Table.Specs {
		sp, err := spec.LoadFS(specs.FS, ref.Spec)
		if err != nil {
			return err
		}
		m, err := sp.Build(f.Params)
		if err != nil {
			return fmt.Errorf("convert: %s with the parameters of %s: %w", ref.Spec, f.Part.label(), err)
		}
		if rep := spec.Plan(m, header, ref.Prefix); !rep.OK() {
			return fmt.Errorf("convert: %s (%s) does not fit specs/%s: %w", f.Part.label(), f.Component(), ref.Spec, rep.Errors(""))
		}
	}
	return nil
}

// Overrides are the spec parameters of a found component that differ from
// the spec's defaults: what a stored model needs.
func Overrides(f *Found, ref SpecRef) (map[string]string, error) {
	sp, err := spec.LoadFS(specs.FS, ref.Spec)
	if err != nil {
		return nil, err
	}
	defaults := map[string]string{}
	for _, p := range sp.Params {
		if p.Default != nil {
			defaults[p.Name] = p.Default.Value
		}
	}
	out := map[string]string{}
	for k, v := range f.Params {
		if !sameNumber(defaults[k], v) {
			out[k] = v
		}
	}
	return out, nil
}

func sameNumber(a, b string) bool {
	x, err1 := strconv.ParseFloat(a, 64)
	y, err2 := strconv.ParseFloat(b, 64)
	return err1 == nil && err2 == nil && x == y
}

// Report prints what was found.
func (d *Detection) Report(w io.Writer) {
	src := d.Source
	fmt.Fprintf(w, "source: %s (%s)\n", src.Path, src.Kind)
	for _, f := range d.Found {
		fmt.Fprintf(w, "  %-13s %s, %s layout%s: %d tensors, %s parameters, %s\n", f.Component(), f.Part.label(),
			f.Layout.Name, prefixNote(f.Prefix, f.EMA), len(f.Sources), millions(f.NumParams), dtypeName(f.DType))
		keys := slices.Sorted(maps.Keys(f.Params))
		var ps []string
		for _, k := range keys {
			ps = append(ps, k+"="+f.Params[k])
		}
		fmt.Fprintf(w, "                spec parameters: %s\n", strings.Join(ps, " "))
	}
	if n := len(d.Ignored); n > 0 {
		fmt.Fprintf(w, "  ignored: %d tensors that are not weights (%s)\n", n, firstN(d.Ignored, 4))
	}
	if n := len(d.Unused); n > 0 {
		fmt.Fprintf(w, "  left out (--lenient): %d tensors no component uses (%s)\n", n, firstN(d.Unused, 4))
	}
	for _, p := range src.Parts {
		if len(p.Leaves) > 0 {
			fmt.Fprintf(w, "  %s also holds: %s\n", p.label(), firstN(p.Leaves, 4))
		}
	}
	for _, s := range src.Skipped {
		fmt.Fprintf(w, "  skipped %s\n", s)
	}
}

func millions(n int64) string {
	return strconv.FormatFloat(float64(n)/1e6, 'f', 2, 64) + "M"
}

func dtypeName(st string) string {
	if dt, ok := srcDType(st); ok {
		return dt.String()
	}
	return st
}
