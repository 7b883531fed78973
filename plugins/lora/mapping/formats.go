package mapping

import (
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// LoRA file layouts, as data. A key is <prefix><module><suffix>: the prefix
// names the component (U-Net or text encoder) and the naming scheme of the
// module, the suffix the tensor's role. A module's roles decide its kind:
// down/up make a LoRA (a DoRA with a magnitude: kohya/LyCORIS dora_scale or
// PEFT's lora_magnitude_vector), diff/diff_b a full-weight delta, hada_* a
// LoHa, lokr_* a LoKr (LyCORIS).

// Tensor roles.
const (
	roleDown  = "down"
	roleUp    = "up"
	roleAlpha = "alpha"
)

// kindOfRole is the patch kind a role belongs to; alpha belongs to any, and
// a DoRA magnitude (doraRoles) makes a LoRA a DoRA.
var kindOfRole = map[string]string{
	roleDown: "lora", roleUp: "lora",
	"diff": "diff", "diff_b": "diff",
	"hada_w1_a": "loha", "hada_w1_b": "loha", "hada_w2_a": "loha", "hada_w2_b": "loha", "hada_t1": "loha", "hada_t2": "loha",
	"lokr_w1": "lokr", "lokr_w1_a": "lokr", "lokr_w1_b": "lokr", "lokr_w2": "lokr", "lokr_w2_a": "lokr", "lokr_w2_b": "lokr", "lokr_t2": "lokr",
}

// doraRoles are the DoRA magnitudes: kohya / LyCORIS dora_scale and PEFT's
// lora_magnitude_vector.
var doraRoles = map[string]bool{"dora_scale": true, "magnitude": true}

// kindNames name the patch kinds in messages.
var kindNames = map[string]string{"lora": "LoRA", "diff": "full-weight delta (diff)", "loha": "LoHa", "lokr": "LoKr"}

// unsupportedRoles are recognised so that a module using them is refused
// whole rather than planned without them (which would change its math).
var unsupportedRoles = map[string]string{
	"lora_mid":       "LoCon Tucker decomposition (lora_mid)",
	"w_norm":         "LyCORIS norm layers (w_norm/b_norm)",
	"oft":            "OFT/BOFT",
	"glora":          "GLoRA",
	"lora_embedding": "embedding LoRA",
}

// suffix is one tensor of a module: the key ends with Suffix, the role is
// Role; Module, when set, is appended to the module name (the attention
// processor layout names the projection in the suffix).
type suffix struct{ Suffix, Role, Module string }

// prefix opens a key and says which component it belongs to ("" = infer
// from the module name: text_model.* is the text encoder, the rest the
// U-Net).
type prefix struct{ Prefix, Component string }

// loraSuffixes are the down/up pair written with the given names.
func loraSuffixes(down, up string) []suffix {
	return []suffix{{Suffix: down, Role: roleDown}, {Suffix: up, Role: roleUp}}
}

// lycoris are the LyCORIS and kohya tensor names after the module name.
var lycoris = func() []suffix {
	s := loraSuffixes(".lora_down.weight", ".lora_up.weight")
	s = append(s, suffix{Suffix: ".alpha", Role: roleAlpha}, suffix{Suffix: ".lora_mid.weight", Role: "lora_mid"},
		suffix{Suffix: ".dora_scale", Role: "dora_scale"}, suffix{Suffix: ".w_norm", Role: "w_norm"},
		suffix{Suffix: ".b_norm", Role: "w_norm"}, suffix{Suffix: ".oft_blocks", Role: "oft"},
		suffix{Suffix: ".oft_diag", Role: "oft"}, suffix{Suffix: ".a1.weight", Role: "glora"})
	for role, kind := range kindOfRole {
		if kind != "lora" {
			s = append(s, suffix{Suffix: "." + role, Role: role})
		}
	}
	return s
}()

// peft are PEFT's names (get_peft_model_state_dict; ".default" when the
// adapter name was kept).
var peft = []suffix{
	{Suffix: ".lora_A.weight", Role: roleDown}, {Suffix: ".lora_B.weight", Role: roleUp},
	{Suffix: ".lora_A.default.weight", Role: roleDown}, {Suffix: ".lora_B.default.weight", Role: roleUp},
	{Suffix: ".alpha", Role: roleAlpha},
	{Suffix: ".lora_magnitude_vector", Role: "magnitude"}, {Suffix: ".lora_magnitude_vector.weight", Role: "magnitude"},
	{Suffix: ".lora_embedding_A", Role: "lora_embedding"}, {Suffix: ".lora_embedding_B", Role: "lora_embedding"},
}

// diffusersSuffixes are what diffusers' convert_state_dict_to_diffusers
// writes (it renames attention projections only, so PEFT names remain for
// the other layers).
var diffusersSuffixes = append(append(loraSuffixes(".lora.down.weight", ".lora.up.weight"),
	loraSuffixes(".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight")...), peft...)

// attnProcs is the older attention-processor layout:
// <attention>.processor.to_q_lora.down.weight.
var attnProcs = func() []suffix {
	var s []suffix
	for _, p := range []struct{ name, module string }{{"to_q", "to_q"}, {"to_k", "to_k"}, {"to_v", "to_v"}, {"to_out", "to_out.0"}} {
		for _, r := range []string{roleDown, roleUp} {
			s = append(s, suffix{Suffix: ".processor." + p.name + "_lora." + r + ".weight", Role: r, Module: "." + p.module})
		}
	}
	return s
}()

var diffusersPrefixes = []prefix{{"unet.", "unet"}, {"text_encoder.", "text_encoder"}, {"base_model.model.", ""}, {"", ""}}

// naming is one layout: how keys split into modules and roles, and how
// modules resolve to model layers.
type naming struct {
	name     string
	prefixes []prefix
	suffixes []suffix
	// module, when set, is the shape a module name must have.
	module *regexp.Regexp
	// table is the name-table naming community names resolve through
	// ("community", "kohya"); empty for Refiners layouts.
	table string
	// group replaces the affix split (Refiners' legacy layout is positional).
	group func(f *File) ([]*module, []string)
	// resolve sets each module's target; nil means by name table.
	resolve func(pl *planner, f *File, mods []*module)
}

// namings, in detection order: a file is read with the naming that
// explains most of its keys (the first on a tie).
var namings = []*naming{
	{name: "kohya", table: "kohya", suffixes: lycoris,
		prefixes: []prefix{{"lora_unet_", "unet"}, {"lora_te_", "text_encoder"}, {"lora_te1_", "text_encoder"}}},
	{name: "peft", table: "community", suffixes: peft, prefixes: diffusersPrefixes},
	{name: "diffusers", table: "community", suffixes: diffusersSuffixes, prefixes: diffusersPrefixes},
	{name: "diffusers-attnprocs", table: "community", suffixes: attnProcs, prefixes: diffusersPrefixes},
	// <root>.<parent path>.<n>.<Linear|Conv2d>.{down,up}.weight: the n-th
	// adapted layer under the parent (Refiners' SDLoraManager export).
	{name: "refiners", suffixes: loraSuffixes(".down.weight", ".up.weight"),
		prefixes: []prefix{{"", ""}},
		module:   regexp.MustCompile(`^[A-Za-z]\w*(\.[A-Za-z]\w*)*\.[0-9]+\.(Linear|Conv2d)$`),
		resolve:  resolveRefiners},
	// <component>.NNN, alternating up and down weights of the Linear layers
	// under the classes of the <component>_targets metadata (Refiners < 0.4).
	{name: "refiners-legacy", group: groupLegacy, resolve: resolveLegacy},
}

// module is the tensors of one adapted layer, as the file names them.
type module struct {
	component string
	name      string
	tensors   map[string]Tensor // role -> tensor
	keys      []string          // file keys, in file order
	// set by resolution
	target string
	row    *tableRow // the layer's geometry when the name table knows it
	miss   string    // why no target was found, when the resolver knows
}

// noTarget says why a module has no target.
func (m *module) noTarget() string {
	if m.miss != "" {
		return m.miss
	}
	return "name no layer of the model"
}

// split parses a key with a naming's affixes.
func (n *naming) split(key string) (comp, mod, role string, ok bool) {
	for _, s := range n.suffixes {
		if !strings.HasSuffix(key, s.Suffix) {
			continue
		}
		body := strings.TrimSuffix(key, s.Suffix)
		for _, p := range n.prefixes {
			if !strings.HasPrefix(body, p.Prefix) || len(body) == len(p.Prefix) {
				continue
			}
			mod = strings.TrimPrefix(body, p.Prefix) + s.Module
			if n.module != nil && !n.module.MatchString(mod) {
				continue
			}
			comp = p.Component
			if comp == "" && n.table != "" {
				comp = "unet"
				if strings.HasPrefix(mod, "text_model.") {
					comp = "text_encoder"
				}
			}
			return comp, mod, s.Role, true
		}
	}
	return "", "", "", false
}

// groupKeys splits a file's keys into modules; the rest are returned as
// not understood.
func (n *naming) groupKeys(f *File) ([]*module, []string) {
	if n.group != nil {
		return n.group(f)
	}
	byName := map[string]*module{}
	var mods []*module
	var rest []string
	for _, t := range f.Tensors {
		comp, name, role, ok := n.split(t.Key)
		if !ok {
			rest = append(rest, t.Key)
			continue
		}
		id := comp + "\x00" + name
		m := byName[id]
		if m == nil {
			m = &module{component: comp, name: name, tensors: map[string]Tensor{}}
			byName[id] = m
			mods = append(mods, m)
		}
		if _, dup := m.tensors[role]; dup { // e.g. lora_A.weight and lora_A.default.weight
			rest = append(rest, t.Key)
			continue
		}
		m.tensors[role] = t
		m.keys = append(m.keys, t.Key)
	}
	return mods, rest
}

// legacyKey is a Refiners legacy key: <component>.<index>.
var legacyKey = regexp.MustCompile(`^(unet|text_encoder|lda)\.([0-9]+)$`)

// groupLegacy pairs a legacy file's tensors: per component, in key order,
// an up weight then a down weight per layer.
func groupLegacy(f *File) ([]*module, []string) {
	byComp := map[string][]Tensor{}
	var comps, rest []string
	for _, t := range f.Tensors {
		m := legacyKey.FindStringSubmatch(t.Key)
		if m == nil || f.Metadata[m[1]+"_targets"] == "" {
			rest = append(rest, t.Key)
			continue
		}
		if byComp[m[1]] == nil {
			comps = append(comps, m[1])
		}
		byComp[m[1]] = append(byComp[m[1]], t)
	}
	var mods []*module
	for _, comp := range comps {
		ts := byComp[comp]
		sort.Slice(ts, func(i, j int) bool { return ts[i].Key < ts[j].Key })
		for i := 0; i+1 < len(ts); i += 2 {
			mods = append(mods, &module{component: comp, name: comp + "[" + strconv.Itoa(i/2) + "]",
				tensors: map[string]Tensor{roleUp: ts[i], roleDown: ts[i+1]}, keys: []string{ts[i].Key, ts[i+1].Key}})
		}
		if len(ts)%2 == 1 {
			rest = append(rest, ts[len(ts)-1].Key)
		}
	}
	return mods, rest
}

// legacyClasses are the classes a legacy <component>_targets entry names,
// with the subclasses the reference's isinstance walk also finds.
var legacyClasses = map[string][]string{
	"Attention":             {"Attention", "SelfAttention", "SelfAttention2d"},
	"SelfAttention":         {"SelfAttention", "SelfAttention2d"},
	"CrossAttentionBlock2d": {"CrossAttentionBlock2d", "CLIPLCrossAttention", "SDXLCrossAttention"},
	"FeedForward":           {"FeedForward"},
	"TransformerLayer":      {"TransformerLayer"},
	"self":                  nil, // every Linear of the component
}

// ldmNames are the original Stable Diffusion (LDM/SGM) block names some
// kohya-style files use instead of diffusers': not supported yet.
var ldmNames = []string{"input_blocks_", "middle_block_", "output_blocks_"}
