package sd15_test

import (
	"context"
	"math"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/models/sd15"
)

// TestControlnetResidual: scale·x lands in its slot (0 + scale·x while the
// slot is unset, then added), the context scale overrides the built one,
// and bad slots or scales are errors naming the layer.
func TestControlnetResidual(t *testing.T) {
	store := func(n int64, name string, scale float64) core.Module {
		return &sd15.ControlnetResidual{N: n, Name: name, Scale: scale, Slots: sd15.DefaultResidualSlots}
	}
	cases := []struct {
		name     string
		layers   []core.Module
		contexts core.Contexts
		want     float32 // slot 1 for x = 1
		err      string
	}{
		{"one", []core.Module{store(1, "a", 2)}, nil, 2, ""},
		{"two add up", []core.Module{store(1, "a", 2), store(1, "b", 0.5)}, nil, 2.5, ""},
		{"negative slot", []core.Module{store(-12, "a", 3)}, nil, 3, ""},
		{"context scale", []core.Module{store(1, "a", 2)}, core.Contexts{"controlnet": {"scale_a": 0.25}}, 0.25, ""},
		{"other name's scale", []core.Module{store(1, "a", 2)}, core.Contexts{"controlnet": {"scale_b": 0.25}}, 2, ""},
		{"no name reads no context", []core.Module{store(1, "", 2)}, core.Contexts{"controlnet": {"scale_": 0.25}}, 2, ""},
		{"slot out of range", []core.Module{store(13, "a", 1)}, nil, 0, "residual 13 out of range for 13 slots"},
		{"bad scale", []core.Module{store(1, "a", 1)}, core.Contexts{"controlnet": {"scale_a": "high"}}, 0, `key "scale_a" holds string, not a float64 scale`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
				m := core.NewChain(append(append([]core.Module(nil), c.layers...), &sd15.UseResidual{N: 1})...)
				x := s.FromFloat32([]float32{1}, 1)
				out, err := core.Call{Contexts: c.contexts}.Forward(s, m, x)
				if err != nil {
					return err
				}
				got := s.Float32s(out[0])
				if s.Err() != nil {
					return s.Err()
				}
				if len(got) != 1 || got[0] != c.want {
					t.Errorf("slot 1 holds %v, want [%g]", got, c.want)
				}
				return nil
			})
			switch {
			case c.err == "" && err != nil:
				t.Fatal(err)
			case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
				t.Fatalf("got %v, want an error containing %q", err, c.err)
			}
		})
	}
}

// TestControlnetResidualOff: at scale 0 (built or from the context) the
// slot is left exactly as it was: unset stays unset (a required read
// fails), a set slot keeps its bytes even for infinite features (0·Inf
// would be NaN) and a −0 in the slot stays −0.
func TestControlnetResidualOff(t *testing.T) {
	store := func(name string, scale float64) core.Module {
		return &sd15.ControlnetResidual{N: 1, Name: name, Scale: scale, Slots: sd15.DefaultResidualSlots}
	}
	for _, c := range []struct {
		name     string
		layers   []core.Module
		contexts core.Contexts
		want     []float32 // nil: the slot must stay unset
	}{
		{"built scale 0, unset", []core.Module{store("a", 0)}, nil, nil},
		{"context scale 0, unset", []core.Module{store("a", 2)}, core.Contexts{"controlnet": {"scale_a": 0.0}}, nil},
		{"context scale 0 after a set slot", []core.Module{store("b", -1), store("a", 2)}, core.Contexts{"controlnet": {"scale_a": 0.0}}, []float32{float32(math.Copysign(0, -1)), float32(math.Inf(-1))}},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
				m := core.NewChain(append(append([]core.Module(nil), c.layers...), &sd15.UseResidual{N: 1, Required: true})...)
				x := s.FromFloat32([]float32{0, float32(math.Inf(1))}, 2)
				out, err := core.Call{Contexts: c.contexts}.Forward(s, m, x)
				if c.want == nil {
					if err == nil || !strings.Contains(err.Error(), "residual 1 is not set") {
						t.Errorf("got %v, want the slot unset", err)
					}
					return nil
				}
				if err != nil {
					return err
				}
				got := s.Float32s(out[0])
				if s.Err() != nil {
					return s.Err()
				}
				for i := range c.want {
					if math.Float32bits(got[i]) != math.Float32bits(c.want[i]) {
						t.Errorf("slot 1 holds %v, want %v bit for bit", got, c.want)
						break
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}
