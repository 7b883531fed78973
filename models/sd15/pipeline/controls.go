package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"math"
	"strconv"

	"github.com/refiners-go/refiners/adapt"
	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/hosts"
	"github.com/refiners-go/refiners/imageproc"
	"github.com/refiners-go/refiners/models/sd15"
	"github.com/refiners-go/refiners/sdk"
)

// Control is one ControlNet for a generation: a file planned by an
// installed plugin (e.g. "controlnet") with its JSON parameters, inserted
// into the U-Net for this generation only, and its condition image.
// Params holds no "scale" (Scale is the scale); "name" (control<i>),
// num_heads and num_groups (the U-Net's, when it was built with them) are
// filled in when absent.
//
// The zero values are the defaults: Scale 0 means 1 (a negative scale is
// an error), End 0 means 1, Start 0. The ControlNet acts at run step i of
// n (0-based, over the steps the generation runs) when i/n ≥ Start and
// (i+1)/n ≤ End, diffusers' control_guidance_start/end rule; at the other
// steps it is out of the U-Net (not computed; the U-Net's output is then
// bit for bit its own).
type Control struct {
	Plugin, File, Params string
	// Condition is the condition image (e.g. an edge map), resized to the
	// generation's Width×Height as init images are (PIL's bicubic).
	Condition *RGB
	// Preprocess is "" (Condition is the condition) or "canny": Condition
	// is a photo, resized, then turned into its Canny edge map
	// (imageproc.CannyRGB, OpenCV's cv2.Canny on the RGB array, as
	// ControlNet's Canny annotator calls it) with thresholds CannyLow and
	// CannyHigh (both 0: 100 and 200), replicated to three channels.
	Preprocess          string
	CannyLow, CannyHigh float64
	Scale, Start, End   float64
}

// Defaults of a Control.
const (
	DefaultControlScale = 1.0
	DefaultCannyLow     = 100.0
	DefaultCannyHigh    = 200.0
	// ControlPreprocessCanny is the one preprocessor so far.
	ControlPreprocessCanny = "canny"
)

// ControlReport says what a ControlNet did in a generation.
type ControlReport struct {
	Plugin, File string
	// Name is the ControlNet's name in the U-Net (its context keys end in
	// _Name): the "name" of Params, else control<i>.
	Name   string
	Format string
	// Scale, Start and End as used (defaults filled in); Preprocess as given.
	Scale, Start, End float64
	Preprocess        string
	// ActiveSteps is how many of the Steps run steps the ControlNet acted
	// in; FirstStep and LastStep bound them (run steps, 0-based; −1 when
	// none).
	ActiveSteps, Steps, FirstStep, LastStep int
	Keys, Matched                           int      // keys in the file; keys the plan used
	Unmatched                               []string // keys the plan did not use
	Warnings                                []string
}

// withDefaults fills a Control's zero fields and checks it.
func (c Control) withDefaults(i int) (Control, error) {
	what := fmt.Sprintf("control %d", i+1)
	if c.File != "" {
		what += " (" + c.File + ")"
	}
	if c.Plugin == "" {
		return c, inputErr("%s: no plugin (e.g. controlnet)", what)
	}
	if c.File == "" {
		return c, inputErr("%s: no ControlNet file", what)
	}
	if c.Condition == nil || c.Condition.Width < 1 || c.Condition.Height < 1 {
		return c, inputErr("%s: no condition image", what)
	}
	for _, v := range []struct {
		name string
		v    float64
	}{{"scale", c.Scale}, {"start", c.Start}, {"end", c.End}, {"low", c.CannyLow}, {"high", c.CannyHigh}} {
		if math.IsNaN(v.v) || math.IsInf(v.v, 0) {
			return c, inputErr("%s: %s %v is not a number", what, v.name, v.v)
		}
	}
	if c.Scale < 0 {
		return c, inputErr("%s: scale %g: want a value ≥ 0 (0: the default, 1)", what, c.Scale)
	}
	if c.Scale == 0 {
		c.Scale = DefaultControlScale
	}
	if c.End == 0 {
		c.End = 1
	}
	// diffusers' check_inputs: 0 ≤ start < end ≤ 1.
	if c.Start < 0 || c.End > 1 || c.Start >= c.End {
		return c, inputErr("%s: start %g, end %g: want 0 ≤ start < end ≤ 1 (fractions of the steps)", what, c.Start, c.End)
	}
	switch c.Preprocess {
	case "":
		if c.CannyLow != 0 || c.CannyHigh != 0 {
			return c, inputErr("%s: canny thresholds without preprocess canny", what)
		}
	case ControlPreprocessCanny:
		if c.CannyLow == 0 && c.CannyHigh == 0 {
			c.CannyLow, c.CannyHigh = DefaultCannyLow, DefaultCannyHigh
		}
		if c.CannyLow < 0 || c.CannyHigh < 0 || c.CannyLow > c.CannyHigh {
			return c, inputErr("%s: canny thresholds low %g, high %g: want 0 ≤ low ≤ high", what, c.CannyLow, c.CannyHigh)
		}
	default:
		return c, inputErr("%s: unknown preprocess %q (want \"\" or %q)", what, c.Preprocess, ControlPreprocessCanny)
	}
	return c, nil
}

// ControlActive is diffusers' controlnet_keep for run step i of n (0-based):
// whether a ControlNet with guidance range [start, end] acts at that step,
// i/n ≥ start and (i+1)/n ≤ end, in float64 as Python computes it.
func ControlActive(i, n int, start, end float64) bool {
	return !(float64(i)/float64(n) < start || float64(i+1)/float64(n) > end)
}

// ConditionImage is the condition a Control gives the ControlNet for a
// width×height generation: the image resized (PIL's bicubic), then its
// Canny edge map when asked (255 on edges, 0 elsewhere, on all three
// channels). The Control must have its defaults.
func (c Control) ConditionImage(width, height int) *RGB {
	img := c.Condition.Resize(width, height)
	if c.Preprocess != ControlPreprocessCanny {
		return img
	}
	edges := imageproc.CannyRGB(img.Image(), c.CannyLow, c.CannyHigh)
	return grayToRGB(edges)
}

// grayToRGB replicates a gray image on three channels (ControlNet's HWC3).
func grayToRGB(g *image.Gray) *RGB {
	b := g.Bounds()
	out := NewRGB(b.Dx(), b.Dy())
	for y := range b.Dy() {
		for x := range b.Dx() {
			v := g.Pix[y*g.Stride+x]
			i := 3 * (y*b.Dx() + x)
			out.Pix[i], out.Pix[i+1], out.Pix[i+2] = v, v, v
		}
	}
	return out
}

// conditionTensor is Refiners' image_to_tensor: [1, 3, H, W] float32 of
// byte/255 (the batch of one broadcasts over the guidance batch, as the
// condition Refiners' SD1ControlnetAdapter is given).
func conditionTensor(s *tensor.Scope, img *RGB) *tensor.Tensor {
	plane := img.Width * img.Height
	vals := make([]float32, 3*plane)
	for i := range plane {
		for c := range 3 {
			vals[c*plane+i] = float32(img.Pix[3*i+c]) / 255
		}
	}
	return s.FromFloat32(vals, 1, 3, int64(img.Height), int64(img.Width))
}

// activeControl is an inserted ControlNet during a generation.
type activeControl struct {
	module    core.Module // the inserted ControlNet, a child of the U-Net
	name      string
	condition *tensor.Tensor
	scale     float64
	start     float64
	end       float64
}

// setContexts records every ControlNet's condition and its scale at run
// step i of n (0 outside its range) in a U-Net call's contexts.
func setControls(c core.Contexts, controls []activeControl, i, n int) {
	for _, a := range controls {
		scale := 0.0
		if ControlActive(i, n, a.start, a.end) {
			scale = a.scale
		}
		sd15.SetControlnet(c, a.name, a.condition, scale)
	}
}

// applyControls plans every ControlNet against the U-Net (after the
// adapters: a LoRA never sees a ControlNet's layers) and inserts them, in
// order, each under its own name; the conditions are made on the model's
// device and dtype in s. On error nothing stays inserted; otherwise eject
// removes them all, in reverse order.
func (m *Model) applyControls(ctx context.Context, s *tensor.Scope, controls []Control, width, height, steps int) ([]activeControl, []ControlReport, func() error, error) {
	var undo []func() error
	ejectAll := func() error {
		var errs []error
		for i := len(undo) - 1; i >= 0; i-- {
			errs = append(errs, undo[i]())
		}
		undo = nil
		return errors.Join(errs...)
	}
	var active []activeControl
	var reports []ControlReport
	seen := map[string]int{}
	for i, c := range controls {
		a, rep, u, err := m.applyControl(ctx, s, i, c, width, height)
		if u != nil {
			undo = append(undo, u)
		}
		if err == nil {
			if j, dup := seen[a.name]; dup {
				err = inputErr("the name %q is also control %d's: give each ControlNet its own name", a.name, j+1)
			}
		}
		if err != nil {
			ejectAll()
			return nil, nil, nil, fmt.Errorf("control %d %s (%s): %w", i+1, c.File, c.Plugin, err)
		}
		seen[a.name] = i
		rep.Steps, rep.FirstStep, rep.LastStep = steps, -1, -1
		for k := range steps {
			if ControlActive(k, steps, a.start, a.end) {
				if rep.FirstStep < 0 {
					rep.FirstStep = k
				}
				rep.LastStep = k
				rep.ActiveSteps++
			}
		}
		active = append(active, a)
		reports = append(reports, rep)
	}
	return active, reports, ejectAll, nil
}

// controlParams is a Control's Params with "name" set to control<i> when
// absent (ControlNets of one generation need distinct names), and
// num_heads and num_groups, when absent, set to the U-Net's when it was
// built with them (a ControlNet has its U-Net's; they are in no shape).
func controlParams(params string, i int, unetSet map[string]string) (string, error) {
	obj := map[string]any{}
	if params != "" {
		if err := json.Unmarshal([]byte(params), &obj); err != nil {
			return "", inputErr("params %q: want a JSON object: %v", params, err)
		}
	}
	if obj == nil {
		obj = map[string]any{}
	}
	if _, ok := obj["name"]; !ok {
		obj["name"] = fmt.Sprintf("control%d", i)
	}
	for _, k := range []string{"num_heads", "num_groups"} {
		if _, ok := obj[k]; !ok && unetSet[k] != "" {
			n, err := strconv.Atoi(unetSet[k])
			if err != nil {
				return "", fmt.Errorf("the U-Net's %s %q is not an integer", k, unetSet[k])
			}
			obj[k] = n
		}
	}
	if _, ok := obj["scale"]; ok {
		return "", inputErr(`params %q: give the scale as the control's scale, not in the plugin's params`, params)
	}
	b, err := json.Marshal(obj)
	return string(b), err
}

func (m *Model) applyControl(ctx context.Context, s *tensor.Scope, i int, c Control, width, height int) (activeControl, ControlReport, func() error, error) {
	rep := ControlReport{Plugin: c.Plugin, File: c.File, Scale: c.Scale, Start: c.Start, End: c.End, Preprocess: c.Preprocess}
	a := activeControl{scale: c.Scale, start: c.Start, end: c.End}
	params, err := controlParams(c.Params, i, m.unetSet)
	if err != nil {
		return a, rep, nil, err
	}
	f, err := weights.Open(c.File)
	if err != nil {
		return a, rep, nil, err
	}
	defer f.Close() // applied tensors are copies
	sum, err := hosts.FileSHA256(c.File)
	if err != nil {
		return a, rep, nil, err
	}
	d, err := m.Plugins.Describe(ctx, c.Plugin)
	if err != nil {
		return a, rep, nil, err
	}
	if len(d.Operations) == 0 {
		return a, rep, nil, fmt.Errorf("plugin %s has no operations", c.Plugin)
	}
	id := fmt.Sprintf("control%d", i)
	header := adapt.Header(id, sum, f)
	rep.Keys = len(header.Tensors)
	plan, err := m.Plugins.Plan(ctx, c.Plugin, &sdk.PlanRequest{Operation: d.Operations[0].Name, Params: params,
		Model: adapt.Summarize(m.UNet), Files: []sdk.File{header}})
	if err != nil {
		return a, rep, nil, fmt.Errorf("planning: %w", err)
	}
	if a.name, err = insertedName(plan); err != nil {
		return a, rep, nil, err
	}
	rep.Name = a.name
	if r := plan.Report; r != nil {
		rep.Format, rep.Warnings, rep.Matched = r.Format, r.Warnings, len(r.Matched)
		matched := map[string]bool{}
		for _, k := range r.Matched {
			matched[k] = true
		}
		for _, t := range header.Tensors {
			if !matched[t.Key] {
				rep.Unmatched = append(rep.Unmatched, t.Key)
			}
		}
	}
	a.condition = m.toModel(s, conditionTensor(s, c.ConditionImage(width, height)))
	if err := s.Err(); err != nil {
		return a, rep, nil, fmt.Errorf("condition image: %w", err)
	}
	before := map[core.Module]bool{}
	for _, c := range m.UNet.Children() {
		before[c] = true
	}
	ap, err := adapt.Apply(s, m.UNet, plan, map[string]*weights.File{id: f})
	if err != nil {
		return a, rep, nil, fmt.Errorf("inserting into the U-Net: %w", err)
	}
	for _, c := range m.UNet.Children() {
		if !before[c] {
			a.module = c
		}
	}
	if a.module == nil {
		return a, rep, ap.Eject, fmt.Errorf("the plan inserted no child into the U-Net")
	}
	return a, rep, ap.Eject, nil
}

// detachOff takes the ControlNets that do not act at run step i of n out
// of the U-Net for that step (they would add nothing: this skips their
// computation; the U-Net's output is the same either way, bit for bit)
// and returns what puts them back where they were.
func (m *Model) detachOff(controls []activeControl, i, n int) (func() error, error) {
	type popped struct {
		index  int
		module core.Module
	}
	var out []popped
	restore := func() error {
		var errs []error
		for j := len(out) - 1; j >= 0; j-- { // lowest index first
			if err := m.UNet.Insert(out[j].index, out[j].module); err != nil {
				errs = append(errs, fmt.Errorf("putting a ControlNet back into the U-Net: %w", err))
			}
		}
		out = nil
		return errors.Join(errs...)
	}
	off := map[core.Module]bool{}
	for _, a := range controls {
		if !ControlActive(i, n, a.start, a.end) {
			off[a.module] = true
		}
	}
	if len(off) == 0 {
		return restore, nil
	}
	kids := m.UNet.Children()
	for idx := len(kids) - 1; idx >= 0; idx-- { // highest index first: the lower ones stay valid
		if !off[kids[idx]] {
			continue
		}
		if _, err := m.UNet.Pop(idx); err != nil {
			return nil, errors.Join(err, restore())
		}
		out = append(out, popped{idx, kids[idx]})
	}
	return restore, nil
}

// insertedName is the name of the one ControlNet a plan inserts: its
// insert patch's spec parameter "name".
func insertedName(plan *sdk.Plan) (string, error) {
	var names []string
	for _, p := range plan.Patches {
		if p.Kind != adapt.InsertKind {
			return "", fmt.Errorf("the plan has a %q patch on %q: a ControlNet plan inserts, it patches nothing else", p.Kind, p.Target)
		}
		set, _ := p.Branch["set"].(map[string]any)
		name, ok := set["name"].(string)
		if !ok || name == "" {
			return "", fmt.Errorf("the plan's insert patch sets no ControlNet name (branch %v)", p.Branch)
		}
		names = append(names, name)
	}
	if len(names) != 1 {
		return "", fmt.Errorf("the plan inserts %d sub-models, want one ControlNet", len(names))
	}
	return names[0], nil
}
