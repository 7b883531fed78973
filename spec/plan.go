package spec

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/weights"
)

// PlanRow is one parameter of the model checked against the weights header.
type PlanRow struct {
	Layer  string // dotted path of the layer
	Type   string
	Key    string // key in the weights file
	Want   []int64
	Got    []int64 // nil when the file lacks the key
	Status string  // ok, missing, shape, dtype
	// FileDType is the file's dtype for a tensor of a dtype that cannot
	// be loaded at all (safetensors' name, e.g. I32), else "".
	FileDType string
}

// PlanReport is the result of a dry run: every parameter's expected and
// found shape, plus keys the file has that the model does not use.
type PlanReport struct {
	Rows       []PlanRow
	Unexpected []string
	Params     int64 // number of scalar parameters the model declares
}

// OK reports whether every parameter matched and nothing was left over.
func (r *PlanReport) OK() bool { return len(r.Errors("")) == 0 }

// Errors lists the mismatches as coded errors naming layer path and key.
func (r *PlanReport) Errors(file string) Errors {
	var es Errors
	for _, row := range r.Rows {
		switch row.Status {
		case "missing":
			es = append(es, &Error{File: file, Code: CodeWeightMissing, Msg: fmt.Sprintf("layer %s (%s): no tensor %q in the weights", row.Layer, row.Type, row.Key)})
		case "shape":
			es = append(es, &Error{File: file, Code: CodeWeightShape, Msg: fmt.Sprintf("layer %s (%s): %q has shape %v, the spec expects %v", row.Layer, row.Type, row.Key, row.Got, row.Want)})
		case "dtype":
			if row.FileDType != "" {
				es = append(es, &Error{File: file, Code: CodeWeightShape, Msg: fmt.Sprintf("layer %s (%s): %q has dtype %s, which cannot be loaded (want a floating-point tensor)", row.Layer, row.Type, row.Key, row.FileDType)})
				continue
			}
			es = append(es, &Error{File: file, Code: CodeWeightShape, Msg: fmt.Sprintf("layer %s (%s): %q is not a floating-point tensor", row.Layer, row.Type, row.Key)})
		}
	}
	for _, k := range r.Unexpected {
		es = append(es, &Error{File: file, Code: CodeWeightExtra, Msg: fmt.Sprintf("the weights hold %q, which no layer of the spec uses", k)})
	}
	return es
}

// Plan checks a built (not loaded) model against a weights header: it
// reads no tensor data and allocates no tensors.
func Plan(m core.Module, header []weights.Info, prefix string) *PlanReport {
	return PlanHeader(m, &weights.Header{Tensors: header}, prefix)
}

// PlanHeader is Plan with the whole header (weights.ReadFileHeader), so
// that a tensor of a dtype that cannot be loaded is reported as such, not
// as missing.
func PlanHeader(m core.Module, h *weights.Header, prefix string) *PlanReport {
	header := h.Tensors
	byKey := make(map[string]weights.Info, len(header))
	for _, h := range header {
		byKey[h.Key] = h
	}
	r := &PlanReport{}
	r.Params = core.CountParams(m)
	used := map[string]bool{}
	for _, e := range core.StateDict(m) {
		layer, _ := strings.CutSuffix(e.Key, "."+e.Name)
		if layer == e.Key {
			layer = "(root)"
		}
		typ := ""
		if c, ok := m.(*core.Chain); ok && layer != "(root)" {
			if l, err := c.Layer(layer); err == nil {
				typ = core.TypeName(l)
			}
		}
		key := prefix + e.Key
		used[key] = true
		row := PlanRow{Layer: layer, Type: typ, Key: key, Want: e.Shape, Status: "ok"}
		info, ok := byKey[key]
		dt, unsupported := h.Unsupported[key]
		switch {
		case unsupported:
			row.Status, row.FileDType = "dtype", dt
		case !ok:
			row.Status = "missing"
		case !slices.Equal(info.Shape, e.Shape):
			row.Got, row.Status = info.Shape, "shape"
		case !info.DType.IsFloat():
			row.Got, row.Status = info.Shape, "dtype"
		default:
			row.Got = info.Shape
		}
		r.Rows = append(r.Rows, row)
	}
	for _, h := range header {
		if strings.HasPrefix(h.Key, prefix) && !used[h.Key] {
			r.Unexpected = append(r.Unexpected, h.Key)
		}
	}
	for k := range h.Unsupported {
		if strings.HasPrefix(k, prefix) && !used[k] {
			r.Unexpected = append(r.Unexpected, k)
		}
	}
	slices.Sort(r.Unexpected)
	return r
}

// Print writes the per-parameter shape table.
func (r *PlanReport) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "LAYER\tTYPE\tKEY\tSPEC SHAPE\tFILE SHAPE\tSTATUS")
	for _, row := range r.Rows {
		got := "-"
		if row.Got != nil {
			got = fmt.Sprint(row.Got)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%s\n", row.Layer, row.Type, row.Key, row.Want, got, row.Status)
	}
	for _, k := range r.Unexpected {
		fmt.Fprintf(tw, "-\t-\t%s\t-\t-\tunused\n", k)
	}
	tw.Flush()
	fmt.Fprintf(w, "%d parameter tensors, %d scalars; %d problems\n", len(r.Rows), r.Params, len(r.Errors("")))
}
