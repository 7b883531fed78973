package mapping

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
)

// build checks a resolved module against its target layer and adds its
// patch. Keys of a module that cannot be used are reported as unmatched
// (incomplete or unsupported, with the reason in the report's groups) or
// shape-mismatched.
func (pl *planner) build(f *File, m *module, name string) (string, bool) {
	layer := pl.layers[m.target]
	kinds := map[string]bool{}
	roles := make([]string, 0, len(m.tensors))
	for role := range m.tensors {
		roles = append(roles, role)
	}
	slices.Sort(roles)
	magnitude := ""
	for _, role := range roles {
		if what, bad := unsupportedRoles[role]; bad {
			pl.refused(f, m, role, what+" is not supported by this plugin version")
			return "", false
		}
		if doraRoles[role] {
			magnitude = role
		}
		if k := kindOfRole[role]; k != "" {
			kinds[k] = true
		}
	}
	if len(kinds) == 0 && magnitude != "" {
		kinds["lora"] = true // a magnitude alone: reported as lacking down and up
	}
	if len(kinds) != 1 {
		what := "hold no weights"
		if len(kinds) > 1 {
			what = "mix tensors of several kinds (" + strings.Join(slices.Sorted(maps.Keys(kinds)), ", ") + ")"
		}
		pl.leftOut(f, m, what)
		return "", false
	}
	var kind string
	for k := range kinds {
		kind = k
	}
	if magnitude != "" {
		if kind != "lora" {
			pl.refused(f, m, magnitude, fmt.Sprintf("DoRA on %s modules is not supported by this plugin version", kindNames[kind]))
			return "", false
		}
		kind = "dora"
	}
	if layer.Type != "Linear" && layer.Type != "Conv2d" {
		pl.leftOut(f, m, fmt.Sprintf("target layers that are not Linear or Conv2d (%s, a %s)", m.target, layer.Type))
		return "", false
	}
	w := layer.Params["weight"]
	if (layer.Type == "Linear" && len(w) != 2) || (layer.Type == "Conv2d" && len(w) != 4) {
		pl.leftOut(f, m, fmt.Sprintf("target a %s whose weight is %v", layer.Type, w))
		return "", false
	}
	var p *Patch
	var missing string
	var mismatch bool
	var scale float64 // alpha/rank
	switch kind {
	case "lora":
		p, scale, missing, mismatch = pl.buildLora(f, m, layer, name)
	case "diff":
		p, missing, mismatch = pl.buildDiff(f, m, layer, name)
		scale = 1
	case "loha":
		p, scale, missing, mismatch = pl.buildLoha(f, m, layer, name)
	case "lokr":
		p, scale, missing, mismatch = pl.buildLokr(f, m, layer, name)
	case "dora":
		p, scale, missing, mismatch = pl.buildDora(f, m, layer, name, magnitude)
	}
	if missing != "" {
		pl.leftOut(f, m, "lack "+missing)
		return "", false
	}
	if mismatch {
		pl.report.ShapeMismatched = append(pl.report.ShapeMismatched, pl.labels(f, m.keys)...)
		pl.group(f, m.component, "", "do not fit the shapes of the layers they name", moduleOf(m), m.keys, 1, 0)
		return "", false
	}
	for _, q := range pl.patches {
		if q.Target == m.target && q.Branch["name"] == name {
			pl.leftOut(f, m, "adapt a layer another module of the file already adapts")
			return "", false
		}
	}
	pl.report.Matched = append(pl.report.Matched, pl.labels(f, m.keys)...)
	c := pl.component(f, m.component)
	c.Matched += len(m.keys)
	user := pl.o.Scale * pl.blockScale(m.target)
	if user == 0 {
		pl.warn(fmt.Sprintf("block scale 0 leaves %s out", m.target))
		return kind, true
	}
	p.Branch["scale"] = user
	p.Target, p.Kind = m.target, kind
	key := m.target
	if pl.multi {
		key = name + ":" + m.target
	}
	pl.report.EffectiveScales[key] = user * scale
	pl.patches = append(pl.patches, *p)
	c.Layers++
	return kind, true
}

// require lists the roles a module lacks.
func require(m *module, roles ...string) string {
	var out []string
	for _, r := range roles {
		if _, ok := m.tensors[r]; !ok {
			out = append(out, r)
		}
	}
	return strings.Join(out, ", ")
}

func (pl *planner) binding(f *File, m *module, role, param string, scale float64, reshape []int64) Binding {
	return Binding{File: f.ID, Key: m.tensors[role].Key, Param: param, Scale: scale, Reshape: reshape}
}

// buildLora: down [r, in] / up [out, r] for a Linear; down [r, in, kh, kw]
// (the target's kernel, or 1x1) / up [out, r, kh', kw'] for a Conv2d. A
// 1x1 convolution's weights written as matrices (or the reverse) are
// reshaped. The down convolution takes the target's stride (and its
// padding when the kernels agree); other paddings keep the size
// (kernel/2), as Refiners' Conv2dLora.from_weights does.
func (pl *planner) buildLora(f *File, m *module, layer *Layer, name string) (*Patch, float64, string, bool) {
	if miss := require(m, roleDown, roleUp); miss != "" {
		return nil, 0, miss, false
	}
	w := layer.Params["weight"]
	d, u := m.tensors[roleDown].Shape, m.tensors[roleUp].Shape
	if len(d) < 2 || len(u) < 2 || d[0] != u[1] || d[1] != w[1] || u[0] != w[0] {
		return nil, 0, "", true
	}
	rank := d[0]
	var dr, ur []int64 // reshapes
	p := &Patch{}
	var dParam, uParam string
	conv3 := false
	switch layer.Type {
	case "Linear":
		if !isMatrixLike(d) || !isMatrixLike(u) {
			return nil, 0, "", true
		}
		if len(d) != 2 {
			dr = []int64{d[0], d[1]}
		}
		if len(u) != 2 {
			ur = []int64{u[0], u[1]}
		}
		p.Branch = map[string]any{"type": "LinearLora", "name": name, "in_features": w[1], "out_features": w[0], "rank": rank}
		dParam, uParam = "Linear_1.weight", "Linear_2.weight"
	case "Conv2d":
		if len(d) == 2 {
			d, dr = []int64{d[0], d[1], 1, 1}, []int64{d[0], d[1], 1, 1}
		}
		if len(u) == 2 {
			u, ur = []int64{u[0], u[1], 1, 1}, []int64{u[0], u[1], 1, 1}
		}
		if len(d) != 4 || len(u) != 4 || d[2] != d[3] || u[2] != u[3] || d[2]%2 == 0 || u[2]%2 == 0 {
			return nil, 0, "", true
		}
		conv3 = d[2] > 1
		stride, pad := int64(1), d[2]/2
		if m.row == nil {
			m.row = pl.rowFor(m.target)
		}
		if m.row != nil && len(m.row.Stride) == 2 {
			stride = m.row.Stride[0]
			if d[2] == m.row.Weight[2] {
				pad = m.row.Padding[0]
			}
		} else if d[2] > 1 || w[2] > 1 {
			pl.warn(fmt.Sprintf("%s: the stride of %s is unknown; assuming 1", f.ID, m.target))
		}
		p.Branch = map[string]any{"type": "Conv2dLora", "name": name, "in_channels": w[1], "out_channels": w[0], "rank": rank,
			"kernel_size": []int64{d[2], u[2]}, "stride": []int64{stride, 1}, "padding": []int64{pad, u[2] / 2}}
		dParam, uParam = "Conv2d_1.weight", "Conv2d_2.weight"
	}
	scale := pl.alphaScale(f, m, rank, conv3)
	p.Bindings = []Binding{pl.binding(f, m, roleDown, dParam, 1, dr), pl.binding(f, m, roleUp, uParam, scale, ur)}
	return p, scale, "", false
}

// isMatrixLike: [a, b] or [a, b, 1, 1].
func isMatrixLike(s []int64) bool {
	return len(s) == 2 || (len(s) == 4 && s[2] == 1 && s[3] == 1)
}

func deltaBranch(kind, name string, layer *Layer) map[string]any {
	return map[string]any{"type": kind, "name": name, "target_type": layer.Type, "weight_shape": slices.Clone(layer.Params["weight"])}
}

// buildDiff: diff is a delta of the target's weight (same shape, or the
// same elements with 1x1 dimensions dropped), diff_b of its bias.
func (pl *planner) buildDiff(f *File, m *module, layer *Layer, name string) (*Patch, string, bool) {
	if miss := require(m, "diff"); miss != "" {
		return nil, miss, false
	}
	w := layer.Params["weight"]
	p := &Patch{Branch: deltaBranch("WeightDelta", name, layer)}
	ds := m.tensors["diff"].Shape
	var reshape []int64
	if !slices.Equal(ds, w) {
		if numel(ds) != numel(w) || !isMatrixLike(ds) || !isMatrixLike(w) {
			return nil, "", true
		}
		reshape = slices.Clone(w)
	}
	p.Bindings = append(p.Bindings, pl.binding(f, m, "diff", "weight", 1, reshape))
	if b, ok := m.tensors["diff_b"]; ok {
		if !slices.Equal(b.Shape, layer.Params["bias"]) {
			return nil, "", true
		}
		p.Branch["bias"] = true
		p.Bindings = append(p.Bindings, pl.binding(f, m, "diff_b", "bias", 1, nil))
	}
	return p, "", false
}

// buildLoha: ΔW = (w1_a·w1_b) ⊙ (w2_a·w2_b) · alpha/rank, rank = w1_b's
// first dimension. Without Tucker cores w1_a is [out, r] and w1_b [r, in·kh·kw];
// with them (hada_t1, hada_t2 [r, r, kh, kw]) w1_a is [r, out] and w1_b [r, in].
func (pl *planner) buildLoha(f *File, m *module, layer *Layer, name string) (*Patch, float64, string, bool) {
	roles := []string{"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}
	_, t1 := m.tensors["hada_t1"]
	_, t2 := m.tensors["hada_t2"]
	if t1 || t2 {
		roles = append(roles, "hada_t1", "hada_t2")
	}
	if miss := require(m, roles...); miss != "" {
		return nil, 0, miss, false
	}
	w := layer.Params["weight"]
	sh := func(r string) []int64 { return m.tensors[r].Shape }
	rank := sh("hada_w1_b")[0]
	ok := true
	for _, i := range []string{"1", "2"} {
		a, b := sh("hada_w"+i+"_a"), sh("hada_w"+i+"_b")
		if len(a) != 2 || len(b) != 2 {
			ok = false
			continue
		}
		if t1 {
			t := sh("hada_t" + i)
			ok = ok && len(w) == 4 && len(t) == 4 && t[0] == a[0] && t[1] == b[0] && t[2] == w[2] && t[3] == w[3] &&
				a[1] == w[0] && b[1] == w[1]
		} else {
			ok = ok && a[0] == w[0] && a[1] == b[0] && b[1] == numel(w[1:])
		}
	}
	if !ok {
		return nil, 0, "", true
	}
	scale := pl.alphaScale(f, m, rank, false)
	p := &Patch{Branch: deltaBranch("LoHa", name, layer)}
	p.Branch["rank"], p.Branch["tucker"] = rank, t1
	for _, r := range roles {
		s := 1.0
		if r == "hada_w1_a" {
			s = scale
		}
		p.Bindings = append(p.Bindings, pl.binding(f, m, r, r, s, nil))
	}
	return p, scale, "", false
}

// buildLokr: ΔW = kron(w1, w2) · alpha/rank, w1 = lokr_w1 or lokr_w1_a·lokr_w1_b
// ([a, c]), w2 = lokr_w2 ([b, d] or [b, d, kh, kw]) or lokr_w2_a·lokr_w2_b
// ([b, r]·[r, d·kh·kw]; with lokr_t2 [r, r, kh, kw]: [r, b], [r, d]); out =
// a·b, in·kh·kw = c·d·kh·kw. rank is w1_b's (else w2_b's) first dimension;
// with neither, alpha is not used. The branch carries the layout (w1_shape,
// which factors are products, Tucker), so the host knows every factor's
// shape; a whole lokr_w2 is reshaped to the weight's rank ([b, d, kh, kw]
// for a Conv2d) when the file flattens it.
func (pl *planner) buildLokr(f *File, m *module, layer *Layer, name string) (*Patch, float64, string, bool) {
	has := func(r string) bool { _, ok := m.tensors[r]; return ok }
	sh := func(r string) []int64 { return m.tensors[r].Shape }
	var roles []string
	var a, c, b, dFlat, rank int64
	ok := true
	switch {
	case has("lokr_w1"):
		roles = append(roles, "lokr_w1")
		if s := sh("lokr_w1"); len(s) == 2 {
			a, c = s[0], s[1]
		} else {
			ok = false
		}
	case has("lokr_w1_a") && has("lokr_w1_b"):
		roles = append(roles, "lokr_w1_a", "lokr_w1_b")
		x, y := sh("lokr_w1_a"), sh("lokr_w1_b")
		ok = len(x) == 2 && len(y) == 2 && x[1] == y[0]
		if ok {
			a, c, rank = x[0], y[1], y[0]
		}
	default:
		return nil, 0, "lokr_w1 (or lokr_w1_a and lokr_w1_b)", false
	}
	w := layer.Params["weight"]
	switch {
	case has("lokr_w2"):
		roles = append(roles, "lokr_w2")
		s := sh("lokr_w2")
		ok = ok && len(s) >= 2
		if ok {
			b, dFlat = s[0], numel(s[1:])
			if len(s) == 4 && (len(w) != 4 || s[2] != w[2] || s[3] != w[3]) {
				ok = false
			}
		}
	case has("lokr_w2_a") && has("lokr_w2_b"):
		roles = append(roles, "lokr_w2_a", "lokr_w2_b")
		x, y := sh("lokr_w2_a"), sh("lokr_w2_b")
		ok = ok && len(x) == 2 && len(y) == 2
		if !ok {
			break
		}
		if rank == 0 {
			rank = y[0]
		}
		if has("lokr_t2") {
			roles = append(roles, "lokr_t2")
			t := sh("lokr_t2")
			ok = len(t) == 4 && len(w) == 4 && t[0] == x[0] && t[1] == y[0] && t[2] == w[2] && t[3] == w[3]
			b, dFlat = x[1], y[1]*numel(w[2:])
		} else {
			ok = x[1] == y[0]
			b, dFlat = x[0], y[1]
		}
	default:
		return nil, 0, "lokr_w2 (or lokr_w2_a and lokr_w2_b)", false
	}
	if !ok || a*b != w[0] || c*dFlat != numel(w[1:]) || w[1]%c != 0 {
		return nil, 0, "", true
	}
	scale := 1.0
	if rank > 0 {
		scale = pl.alphaScale(f, m, rank, false)
	}
	p := &Patch{Branch: deltaBranch("LoKr", name, layer)}
	p.Branch["rank"] = rank
	p.Branch["w1_shape"] = []int64{a, c}
	p.Branch["w1_factored"] = !has("lokr_w1")
	p.Branch["w2_factored"] = !has("lokr_w2")
	p.Branch["tucker"] = slices.Contains(roles, "lokr_t2")
	for i, r := range roles {
		s := 1.0
		if i == 0 {
			s = scale
		}
		var reshape []int64
		if want := append([]int64{b, w[1] / c}, w[2:]...); r == "lokr_w2" && !slices.Equal(sh(r), want) {
			reshape = want
		}
		p.Bindings = append(p.Bindings, pl.binding(f, m, r, r, s, reshape))
	}
	sort.SliceStable(p.Bindings, func(i, j int) bool { return p.Bindings[i].Param < p.Bindings[j].Param })
	return p, scale, "", false
}

// float32Eps is float32's machine epsilon (torch.finfo(torch.float32).eps),
// which LyCORIS adds to DoRA norms.
const float32Eps = 1.1920928955078125e-07

// buildDora: a LoRA's down and up as a DoRA takes them (down [r, in] for a
// Linear, [r, in, kh, kw] with the target's kernel for a Conv2d, a 1x1
// target's possibly as a matrix; up [out, r] or [out, r, 1, 1]) and a
// magnitude, one value per channel:
//
//   - kohya / LyCORIS dora_scale, [out, 1] or [out, 1, 1, 1] (per output
//     channel, LyCORIS's default wd_on_out) or [1, in] / [1, in, 1, 1]
//     (wd_on_out=False). Such modules keep LyCORIS's conventions: the user
//     scale moves the rescaling factor (LyCORIS's multiplier; ΔW enters
//     whole) and float32's eps is added to the norm.
//   - PEFT's lora_magnitude_vector, [out] for a Linear, [1, out, 1, 1] for
//     a Conv2d (PEFT 0.10). PEFT's conventions: the scale multiplies ΔW
//     inside the norm, no eps.
//
// alpha/rank goes on up, as for LoRAs.
func (pl *planner) buildDora(f *File, m *module, layer *Layer, name, magRole string) (*Patch, float64, string, bool) {
	if miss := require(m, roleDown, roleUp); miss != "" {
		return nil, 0, miss, false
	}
	w := layer.Params["weight"]
	d, u, g := m.tensors[roleDown].Shape, m.tensors[roleUp].Shape, m.tensors[magRole].Shape
	if len(d) < 2 || len(u) < 2 || d[0] != u[1] || d[1] != w[1] || u[0] != w[0] {
		return nil, 0, "", true
	}
	rank, out, in := d[0], w[0], w[1]
	wantD, wantU := append([]int64{rank, in}, w[2:]...), []int64{out, rank}
	if len(w) == 4 {
		wantU = append(wantU, 1, 1)
	}
	dr, ok1 := fitShape(d, wantD)
	ur, ok2 := fitShape(u, wantU)
	if !ok1 || !ok2 {
		return nil, 0, "", true
	}
	ones := func(s []int64) bool { return !slices.ContainsFunc(s, func(x int64) bool { return x != 1 }) }
	axis, magShape := "", []int64(nil)
	switch {
	case magRole == "magnitude" && numel(g) == out && !slices.ContainsFunc(g, func(x int64) bool { return x != 1 && x != out }):
		axis, magShape = "output", []int64{out}
	case magRole == "dora_scale" && len(g) >= 1 && g[0] == out && ones(g[1:]):
		axis, magShape = "output", []int64{out}
	case magRole == "dora_scale" && len(g) >= 2 && g[0] == 1 && g[1] == in && ones(g[2:]):
		axis, magShape = "input", []int64{in}
	default:
		return nil, 0, "", true
	}
	var mr []int64
	if !slices.Equal(g, magShape) {
		mr = magShape
	}
	scale := pl.alphaScale(f, m, rank, len(w) == 4 && w[2]*w[3] > 1)
	p := &Patch{Branch: deltaBranch("DoRA", name, layer)}
	p.Branch["rank"], p.Branch["axis"] = rank, axis
	if magRole == "dora_scale" {
		p.Branch["scale_mode"], p.Branch["eps"] = "magnitude", float32Eps
	}
	p.Bindings = []Binding{pl.binding(f, m, roleDown, "down", 1, dr), pl.binding(f, m, roleUp, "up", scale, ur),
		pl.binding(f, m, magRole, "magnitude", 1, mr)}
	return p, scale, "", false
}

// fitShape is the reshape a tensor of shape got needs to be want: none
// when equal, want when both are matrix-like ([a, b] or [a, b, 1, 1]) with
// the same elements; ok is false otherwise.
func fitShape(got, want []int64) (reshape []int64, ok bool) {
	if slices.Equal(got, want) {
		return nil, true
	}
	if numel(got) == numel(want) && isMatrixLike(got) && isMatrixLike(want) && got[0] == want[0] {
		return slices.Clone(want), true
	}
	return nil, false
}

func numel(s []int64) int64 {
	n := int64(1)
	for _, d := range s {
		n *= d
	}
	return n
}
