package pipeline

import (
	"context"
	"errors"
	"fmt"

	"github.com/refiners-go/refiners/adapt"
	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/hosts"
	"github.com/refiners-go/refiners/sdk"
)

// Adapter is one adapter file for a generation, planned by an installed
// plugin (e.g. "lora") with its JSON parameters.
type Adapter struct {
	Plugin, File, Params string
}

// AdapterReport says what an adapter's plans did to the two models.
type AdapterReport struct {
	Adapter
	Format string
	// Layers adapted in the U-Net and in the text encoder.
	UNetLayers, TextEncoderLayers int
	Keys, Matched                 int      // keys in the file; keys used by a plan
	Unmatched                     []string // keys neither model's plan used
	Warnings                      []string
}

// applyAdapters plans every adapter against the U-Net and the text
// encoder (the same file and parameters for both: a combined SD file's
// keys for the other model are skipped by the planner) and applies the
// plans as runtime branches. An adapter that adapts no layer of either
// model is an error: a silent no-op is the worst outcome. On error nothing
// stays applied; otherwise eject removes everything, in reverse order.
func (m *Model) applyAdapters(ctx context.Context, s *tensor.Scope, adapters []Adapter) ([]AdapterReport, func() error, error) {
	var undo []func() error
	ejectAll := func() error {
		var errs []error
		for i := len(undo) - 1; i >= 0; i-- {
			errs = append(errs, undo[i]())
		}
		undo = nil
		return errors.Join(errs...)
	}
	var reports []AdapterReport
	for i, a := range adapters {
		rep, u, err := m.applyAdapter(ctx, s, i, a)
		undo = append(undo, u...)
		if err != nil {
			ejectAll()
			return nil, nil, fmt.Errorf("adapter %s (%s): %w", a.File, a.Plugin, err)
		}
		reports = append(reports, rep)
	}
	return reports, ejectAll, nil
}

func (m *Model) applyAdapter(ctx context.Context, s *tensor.Scope, i int, a Adapter) (AdapterReport, []func() error, error) {
	rep := AdapterReport{Adapter: a}
	f, err := weights.Open(a.File)
	if err != nil {
		return rep, nil, err
	}
	defer f.Close() // applied tensors view the mapping, which outlives Close while they live
	sum, err := hosts.FileSHA256(a.File)
	if err != nil {
		return rep, nil, err
	}
	d, err := m.Plugins.Describe(ctx, a.Plugin)
	if err != nil {
		return rep, nil, err
	}
	if len(d.Operations) == 0 {
		return rep, nil, fmt.Errorf("plugin %s has no operations", a.Plugin)
	}
	id := fmt.Sprintf("file%d", i)
	files := map[string]*weights.File{id: f}
	header := adapt.Header(id, sum, f)
	rep.Keys = len(header.Tensors)
	matched := map[string]bool{}
	var undo []func() error
	for _, target := range []struct {
		name   string
		model  *core.Chain
		layers *int
	}{{"U-Net", m.UNet, &rep.UNetLayers}, {"text encoder", m.TextEncoder, &rep.TextEncoderLayers}} {
		plan, err := m.Plugins.Plan(ctx, a.Plugin, &sdk.PlanRequest{Operation: d.Operations[0].Name, Params: a.Params,
			Model: adapt.Summarize(target.model), Files: []sdk.File{header}})
		if err != nil {
			return rep, undo, fmt.Errorf("planning for the %s: %w", target.name, err)
		}
		if r := plan.Report; r != nil {
			if rep.Format == "" {
				rep.Format = r.Format
			}
			rep.Warnings = append(rep.Warnings, r.Warnings...)
			for _, k := range r.Matched {
				matched[k] = true
			}
		}
		if len(plan.Patches) == 0 {
			continue
		}
		ap, err := adapt.Apply(s, target.model, plan, files)
		if err != nil {
			return rep, undo, fmt.Errorf("applying to the %s: %w", target.name, err)
		}
		undo = append(undo, ap.Eject)
		*target.layers = len(plan.Patches)
	}
	rep.Matched = len(matched)
	for _, t := range header.Tensors {
		if !matched[t.Key] {
			rep.Unmatched = append(rep.Unmatched, t.Key)
		}
	}
	if rep.UNetLayers+rep.TextEncoderLayers == 0 {
		return rep, undo, fmt.Errorf("no layer of the U-Net or the text encoder matched its %d keys (format %q)", rep.Keys, rep.Format)
	}
	return rep, undo, nil
}

// ApplyAdapters applies adapters to the U-Net and the text encoder as
// Generate does for a request's Adapters, but leaves them on until eject
// is called (in reverse order; the models are then exactly as before), so
// that a caller running several generations with the same adapters — the
// daemon's groups — applies them once. On error nothing stays applied.
func (m *Model) ApplyAdapters(ctx context.Context, s *tensor.Scope, adapters []Adapter) ([]AdapterReport, func() error, error) {
	if m.Plugins == nil {
		return nil, nil, inputErr("adapters given but no plugin host to plan them")
	}
	return m.applyAdapters(ctx, s, adapters)
}
