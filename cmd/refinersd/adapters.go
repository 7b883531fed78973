package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/refiners-go/refiners/adapt"
	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/hosts"
	"github.com/refiners-go/refiners/sdk"
)

// adapter is one --adapter PLUGIN:FILE[:PARAMS_JSON] flag.
type adapter struct{ plugin, file, params string }

type adapterFlags []adapter

func (a *adapterFlags) String() string { return fmt.Sprint(*a) }

func (a *adapterFlags) Set(v string) error {
	plugin, rest, ok := strings.Cut(v, ":")
	if !ok || plugin == "" || rest == "" {
		return fmt.Errorf("--adapter wants PLUGIN:FILE[:PARAMS_JSON], got %q", v)
	}
	file, params, _ := strings.Cut(rest, ":")
	*a = append(*a, adapter{plugin: plugin, file: file, params: params})
	return nil
}

// applyAdapters plans each adapter with its plugin and applies it to m,
// printing each plan's match report. The returned function removes them.
func applyAdapters(s *tensor.Scope, m *core.Chain, adapters adapterFlags, dir string, fuse bool, out io.Writer) (func(), error) {
	if len(adapters) == 0 {
		return func() {}, nil
	}
	h, err := hosts.New(dir, hosts.Options{})
	if err != nil {
		return nil, err
	}
	defer h.Close()
	var undos []func() error
	undo := func() {
		for i := len(undos) - 1; i >= 0; i-- {
			undos[i]()
		}
	}
	ctx := context.Background()
	model := adapt.Summarize(m)
	for i, a := range adapters {
		f, err := weights.Open(a.file)
		if err != nil {
			undo()
			return nil, err
		}
		defer f.Close()
		sum, err := hosts.FileSHA256(a.file)
		if err != nil {
			undo()
			return nil, err
		}
		d, err := h.Describe(ctx, a.plugin)
		if err != nil {
			undo()
			return nil, err
		}
		if len(d.Operations) == 0 {
			undo()
			return nil, fmt.Errorf("plugin %s has no operations", a.plugin)
		}
		id := fmt.Sprintf("file%d", i)
		plan, err := h.Plan(ctx, a.plugin, &sdk.PlanRequest{Operation: d.Operations[0].Name, Params: a.params,
			Model: model, Files: []sdk.File{adapt.Header(id, sum, f)}})
		if err != nil {
			undo()
			return nil, err
		}
		files := map[string]*weights.File{id: f}
		if fuse {
			fu, err := adapt.Fuse(s, m, plan, files)
			if err != nil {
				undo()
				return nil, fmt.Errorf("adapter %s: %w", a.file, err)
			}
			undos = append(undos, fu.Unfuse)
		} else {
			ap, err := adapt.Apply(s, m, plan, files)
			if err != nil {
				undo()
				return nil, fmt.Errorf("adapter %s: %w", a.file, err)
			}
			undos = append(undos, ap.Eject)
		}
		r := plan.Report
		if r == nil {
			r = &sdk.Report{}
		}
		fmt.Fprintf(out, "adapter %s (%s, format %s): %d layers adapted, %d keys matched, %d unmatched, %d shape-mismatched\n",
			a.file, a.plugin, r.Format, len(plan.Patches), len(r.Matched), len(r.Unmatched), len(r.ShapeMismatched))
		for _, w := range r.Warnings {
			fmt.Fprintf(out, "  %s\n", w)
		}
	}
	return undo, nil
}
