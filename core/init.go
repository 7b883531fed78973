package core

import (
	"fmt"
	"math"

	"github.com/refiners-go/refiners/core/tensor"
)

// Init is how a parameter is initialised, as PyTorch's (and Refiners')
// layers initialise theirs: uniform in [A, B), normal of mean A and
// standard deviation B, or the constant A.
type Init struct {
	Kind tensor.FillKind
	A, B float64
}

// Uniform is uniform in [-bound, bound).
func Uniform(bound float64) Init { return Init{Kind: tensor.FillUniform, A: -bound, B: bound} }

// Normal is normal of mean mean and standard deviation std.
func Normal(mean, std float64) Init { return Init{Kind: tensor.FillNormal, A: mean, B: std} }

// Constant is the constant v (ones, zeros).
func Constant(v float64) Init { return Init{Kind: tensor.FillConstant, A: v} }

// FanIn is PyTorch's fan-in of a weight: its size along dim 1 times the
// size of a kernel (the dims after 1), whatever the layer (Linear,
// Conv2d's [out, in/groups, k, k], ConvTranspose2d's [in, out/groups, k, k]).
func FanIn(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape[min(1, len(shape)):] {
		n *= d
	}
	return n
}

// KaimingUniform is torch.nn.init.kaiming_uniform_(w, a=√5), the default
// of Linear and Conv weights: uniform in ±gain·√(3/fan_in) with
// gain = √(2/(1+a²)), which is ±1/√fan_in.
func KaimingUniform(shape []int64) Init {
	a := math.Sqrt(5)
	gain := math.Sqrt(2 / (1 + a*a))
	return Uniform(gain * math.Sqrt(3/float64(FanIn(shape))))
}

// BiasUniform is the default of Linear and Conv biases: uniform in
// ±1/√fan_in, with the fan-in of the layer's weight.
func BiasUniform(weight []int64) Init { return Uniform(1 / math.Sqrt(float64(FanIn(weight)))) }

// Initializer is a weighted layer that says how PyTorch initialises each
// of its parameters (refinersd init). A Chain's own parameters are
// standard normal (Refiners makes them with torch.randn).
type Initializer interface {
	InitOf(p Param) Init
}

// weightBias is the rule of layers with a kaiming weight and a bias.
func weightBias(ps []Param, p Param) Init {
	if p.Name == "bias" {
		return BiasUniform(ps[0].Shape)
	}
	return KaimingUniform(p.Shape)
}

// normAffine is the rule of normalisations: weight ones, bias zeros.
func normAffine(p Param) Init {
	if p.Name == "bias" {
		return Constant(0)
	}
	return Constant(1)
}

func (l *Linear) InitOf(p Param) Init          { return weightBias(l.Params(), p) }
func (l *Conv2d) InitOf(p Param) Init          { return weightBias(l.Params(), p) }
func (l *ConvTranspose2d) InitOf(p Param) Init { return weightBias(l.Params(), p) }
func (l *LayerNorm) InitOf(p Param) Init       { return normAffine(p) }
func (l *GroupNorm) InitOf(p Param) Init       { return normAffine(p) }
func (l *LayerNorm2d) InitOf(p Param) Init     { return normAffine(p) }
func (l *InstanceNorm2d) InitOf(p Param) Init  { return normAffine(p) }
func (l *Embedding) InitOf(Param) Init         { return Normal(0, 1) }
func (l *Parameter) InitOf(Param) Init         { return Normal(0, 1) }

// InitRules lists each parameter of m (in state-dict order) with its
// initialisation; a weighted layer that is not an Initializer is an error
// naming it.
func InitRules(m Module) ([]Entry, []Init, error) {
	owner := map[**tensor.Tensor]Module{}
	var chains []*Chain
	note := func(x Module) {
		if w, ok := x.(Weighted); ok {
			for _, p := range w.Params() {
				owner[p.Value] = x
			}
		}
		if c, ok := x.(*Chain); ok && len(c.Own) > 0 {
			chains = append(chains, c)
		}
	}
	note(m)
	if c, ok := m.(*Chain); ok {
		c.Walk(func(x Module, _ *Chain, _ string) bool {
			note(x)
			return true
		})
	}
	entries := StateDict(m)
	inits := make([]Init, len(entries))
	for i, e := range entries {
		x, ok := owner[e.Value]
		if !ok {
			inits[i] = Normal(0, 1) // a chain's own parameter
			continue
		}
		in, ok := x.(Initializer)
		if !ok {
			return nil, nil, fmt.Errorf("init %s: %s has no known initialisation (it is not a core.Initializer)", e.Key, TypeName(x))
		}
		inits[i] = in.InitOf(e.Param)
	}
	return entries, inits, nil
}

// InitLikeTorch gives every parameter of m the values PyTorch's layers
// would: kaiming_uniform(a=√5) weights and uniform(±1/√fan_in) biases for
// Linear and Conv layers, ones and zeros for normalisations, standard
// normal embeddings and free parameters; drawn in state-dict order from
// libtorch's generator seeded once with seed, which is the order a Refiners
// constructor makes them in for the core layers. Parameters are made in
// their layer's dtype; earlier values are dropped.
func InitLikeTorch(s *tensor.Scope, m Module, seed uint64) error {
	entries, inits, err := InitRules(m)
	if err != nil {
		return err
	}
	fills := make([]tensor.Fill, len(entries))
	for i, e := range entries {
		fills[i] = tensor.Fill{Shape: e.Shape, Kind: inits[i].Kind, A: inits[i].A, B: inits[i].B}
	}
	c := s.Child()
	defer c.Close()
	// One draw per dtype would break the sequence: draw in float32 and
	// cast each parameter.
	ts := c.Draw(seed, tensor.Float32, fills)
	if err := c.Err(); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	for i, e := range entries {
		t := ts[i]
		if e.DType != tensor.Float32 {
			t = c.ToDType(t, e.DType)
		}
		if err := c.Err(); err != nil {
			return fmt.Errorf("init %s: %w", e.Key, err)
		}
		old := *e.Value
		*e.Value = c.Escape(t)
		old.Drop()
	}
	return nil
}
