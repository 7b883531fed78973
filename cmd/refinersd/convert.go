package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"strings"
	"time"

	"github.com/refiners-go/refiners/convert"
	"github.com/refiners-go/refiners/specs"
	"github.com/refiners-go/refiners/store"
)

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// convertFlags registers the options convert and models add --from share.
func convertFlags(fs *flag.FlagSet) *convert.Options {
	o := &convert.Options{}
	fs.StringVar(&o.Component, "component", "", "convert only this component: "+strings.Join(convert.Components(), ", "))
	fs.StringVar(&o.DType, "dtype", "", "output dtype: float32, float16 or bfloat16 (default: the source's)")
	fs.BoolVar(&o.EMA, "ema", false, "original checkpoints: take the U-Net's EMA weights (model_ema.*)")
	fs.BoolVar(&o.Lenient, "lenient", false, "leave out source tensors no component uses instead of failing")
	fs.StringVar(&o.Variant, "variant", "", "diffusers folders: the weights variant to read (e.g. fp16)")
	fs.Var((*listFlag)(&o.AllowClasses), "allow-class", "module.Name: a class a pickle may hold, read as an inert record (repeatable)")
	o.Params = map[string]string{}
	fs.Var(setFlags(o.Params), "param", "component.name=value: a spec parameter the source does not tell (single files have no config.json), e.g. unet.num_heads=8 (repeatable)")
	return o
}

// convertVerb is `refinersd convert SRC --to OUT`.
func convertVerb(args []string, out io.Writer) (err error) {
	fs := flag.NewFlagSet("convert", flag.ContinueOnError)
	fs.SetOutput(out)
	to := fs.String("to", "", "output: a .safetensors file (one component) or a folder (<component>.safetensors each)")
	dry := fs.Bool("dry-run", false, "say what the source holds; write nothing")
	o := convertFlags(fs)
	rest, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return errors.New("convert: want one SRC (a diffusers folder, a .safetensors, .ckpt, .pt, .pth or .bin file)")
	}
	if *to == "" && !*dry {
		return errors.New("convert: --to OUT is required (or --dry-run)")
	}
	start := time.Now()
	src, err := convert.Open(rest[0], *o)
	if err != nil {
		return err
	}
	defer src.Close()
	d, err := convert.Detect(src, *o)
	if err != nil {
		return err
	}
	d.Report(out)
	if *dry {
		return nil
	}
	if !strings.HasSuffix(*to, ".safetensors") {
		if _, err := os.Stat(*to); os.IsNotExist(err) {
			if err := os.MkdirAll(*to, 0o755); err != nil {
				return fmt.Errorf("convert: %w", err)
			}
			// A failed conversion leaves nothing behind, not even the folder.
			defer func() {
				if err != nil {
					os.Remove(*to)
				}
			}()
		}
	}
	paths, err := convert.OutputPaths(d, *to)
	if err != nil {
		return err
	}
	written, err := convert.Convert(context.Background(), d, paths, *o)
	if err != nil {
		return err
	}
	for _, w := range written {
		fmt.Fprintf(out, "wrote %s: %s (%d tensors, %s)\n", w.Component, w.Path, w.Tensors, w.DType)
	}
	fmt.Fprintf(out, "done in %v\n", time.Since(start).Round(time.Millisecond))
	return nil
}

// addFrom is `refinersd models add NAME --from SRC`: the source is
// converted into a temporary folder and each spec its components run with
// becomes a model: NAME alone, or NAME-<unet|text_encoder|vae_encoder|
// vae_decoder> when there are several.
func addFrom(st *store.Store, name, from string, o convert.Options, sets map[string]string, out io.Writer) error {
	src, err := convert.Open(from, o)
	if err != nil {
		return err
	}
	defer src.Close()
	d, err := convert.Detect(src, o)
	if err != nil {
		return err
	}
	d.Report(out)
	type entry struct {
		f   *convert.Found
		ref convert.SpecRef
	}
	var entries []entry
	var noSpec []string
	for _, f := range d.Found {
		if len(f.Table.Specs) == 0 {
			noSpec = append(noSpec, f.Component())
		}
		for _, ref := range f.Table.Specs {
			entries = append(entries, entry{f, ref})
		}
	}
	if len(noSpec) > 0 {
		fmt.Fprintf(out, "not added: %s (no spec runs it yet; refinersd convert writes it)\n", strings.Join(noSpec, ", "))
	}
	if len(entries) == 0 {
		return fmt.Errorf("models add: %s holds nothing a spec runs (%s)", from, strings.Join(noSpec, ", "))
	}
	if len(sets) > 0 && len(entries) > 1 {
		return fmt.Errorf("models add: --set with %d models; add them one at a time with --component", len(entries))
	}
	names := map[*convert.Found]bool{}
	for _, e := range entries {
		names[e.f] = true
	}
	tmp, err := os.MkdirTemp("", "refinersd-convert-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	all, err := convert.OutputPaths(d, tmp)
	if err != nil {
		return err
	}
	paths := map[*convert.Found]string{}
	for f := range names {
		paths[f] = all[f]
	}
	if _, err := convert.Convert(context.Background(), d, paths, o); err != nil {
		return err
	}
	for _, e := range entries {
		overrides, err := convert.Overrides(e.f, e.ref)
		if err != nil {
			return err
		}
		maps.Copy(overrides, sets)
		model := name
		if len(entries) > 1 {
			model = name + "-" + e.ref.Name
		}
		m, err := st.AddModelFS(model, specs.FS, e.ref.Spec, paths[e.f], overrides, e.ref.Prefix)
		if err != nil {
			return fmt.Errorf("models add %s: %w", model, err)
		}
		fmt.Fprintf(out, "added model %s: spec %s, weights %s (%d bytes, %s)\n", m.Name, m.Spec, m.Weights.Digest, m.Weights.Size, e.f.Component())
	}
	return nil
}
