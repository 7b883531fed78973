package core

import (
	"errors"
	"fmt"

	"github.com/refiners-go/refiners/core/tensor"
)

// EstimatePeak estimates the activation memory, in bytes, of running m on
// inputs of these shapes: the most bytes of tensors live at once during
// the pass (the inputs included, the weights not). It is a dry run of the
// real pass (see tensor.Meter): every input and context tensor whose first
// dimension equals input 0's (the batch) is cut to a batch of 0, the model
// runs on that at the cost of dispatching its ops, and each tensor made is
// counted at the real batch size. No tensor data is read or written.
//
// The estimate needs input 0 to have a batch dimension first, and layers
// whose ops accept an empty batch (libtorch's do); an error says the pass
// could not be metered, not that the real one would fail.
func (c Call) EstimatePeak(s *tensor.Scope, m Module, in ...*tensor.Tensor) (int64, error) {
	if len(in) == 0 || !in[0].Valid() || in[0].Dim() == 0 {
		return 0, errors.New("estimate: input 0 has no batch dimension")
	}
	batch := in[0].Shape()[0]
	meter := tensor.NewMeter(batch)
	ms := s.Metered(meter)
	defer func() {
		ms.TakeErr() // returned as a value, not left in s
		ms.Close()
	}()
	empty := func(t *tensor.Tensor) *tensor.Tensor {
		meter.Add(meter.Bytes(t.Shape(), t.DType())) // the real input is live throughout
		if t.Dim() > 0 && t.Shape()[0] == batch {
			return ms.Narrow(t, 0, 0, 0)
		}
		return ms.ShallowCopy(t)
	}
	dry := make([]*tensor.Tensor, len(in))
	for i, t := range in {
		if !t.Valid() {
			return 0, fmt.Errorf("estimate: input %d is not a tensor", i)
		}
		dry[i] = empty(t)
	}
	call := Call{Ctx: c.Ctx, Contexts: Contexts{}}
	for name, kv := range c.Contexts {
		call.Contexts[name] = map[string]any{}
		for k, v := range kv {
			if t, ok := v.(*tensor.Tensor); ok && t.Valid() {
				v = empty(t)
			}
			call.Contexts[name][k] = v
		}
	}
	if err := ms.Err(); err != nil {
		return 0, fmt.Errorf("estimate: %w", err)
	}
	if _, err := call.Forward(ms, m, dry...); err != nil {
		return 0, fmt.Errorf("estimate (a dry run with an empty batch): %w", err)
	}
	return meter.Peak(), nil
}
