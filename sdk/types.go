package sdk

import (
	"encoding/json"
	"strings"
)

// The protocol's messages as plain Go values: a plugin receives a
// PlanRequest and answers with a Plan; the sdk turns them into protocol
// messages and back (the host uses the same types).

// Description says who a plugin is and what it provides.
type Description struct {
	Name       string // lower-case [a-z0-9_-]; the namespace of its layer types
	Version    string // semantic version
	Protocol   uint32 // protocol version spoken; 0 means this SDK's
	Operations []Operation
	LayerTypes []LayerType
}

// Operation is a patch operation the plugin plans, e.g. "apply".
type Operation struct {
	Name         string
	Doc          string
	ParamsSchema string // JSON Schema (draft 2020-12) of the parameters
	// Example is a request the conformance kit can run: parameters, and
	// the model and files they refer to (tiny, synthetic). Optional.
	Example *PlanRequest
}

// LayerType is a spec block the plugin contributes, used in specs as
// "<plugin>/<Name>".
type LayerType struct {
	Name string
	Doc  string
	Spec string // a YAML spec file defining a block of this name
}

// PlanRequest asks for a plan: an operation, its parameters, a summary of
// the model, and the headers of the files.
type PlanRequest struct {
	Operation string
	Params    string // JSON, valid against the operation's schema; may be empty
	Model     []Layer
	Files     []File
}

// DecodeParams reads the request's JSON parameters into v, refusing
// unknown fields; empty parameters leave v as it is. Its error is an
// InvalidArgument, ready to return.
func (r *PlanRequest) DecodeParams(v any) error {
	if strings.TrimSpace(r.Params) == "" {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(r.Params))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return Errorf("%s: parameters: %v", r.Operation, err)
	}
	if dec.More() {
		return Errorf("%s: parameters: more than one JSON value", r.Operation)
	}
	return nil
}

// Layer summarises one weighted layer of the model (no tensor data).
type Layer struct {
	Path   string             // dotted path, e.g. "Chain_1.Linear_2"
	Type   string             // type name, e.g. "Linear"
	Params map[string][]int64 // parameter name -> shape
	DTypes map[string]string  // parameter name -> dtype, e.g. "float32"
}

// File is a safetensors file's header; the data stays with the host.
type File struct {
	ID       string // how bindings refer to it
	SHA256   string // digest of the whole file
	Tensors  []Tensor
	Metadata map[string]string
}

// Tensor is one tensor of a file's header.
type Tensor struct {
	Key   string
	DType string // safetensors' or ours: the host sends float32, int64, ...
	Shape []int64
	// Value is a one-element tensor's value (a LoRA's alpha), which the
	// host reads so that plugins can scale without tensor data.
	Value *float64
}

// Plan is a plugin's answer: patches, and a report of how the files were
// used.
type Plan struct {
	Patches []Patch
	Report  *Report
}

// Patch adapts one layer: the host wraps the target in an adapter holding
// the branch (a layer description in core.BuildLayer's form, e.g. a
// LinearLora) and fills the branch's parameters from the bindings.
//
// Kind "insert" adds a sub-model as a new child of the target chain ("":
// the model's root) instead: Branch is {"spec": FILE, "set": {PARAM:
// VALUE}, "index": I} (a spec of the host's spec set) or {"layer":
// {DESCRIPTION}, "index": I}, and the bindings fill the sub-model's
// parameters by state-dict key (package adapt, insert.go); a parameter
// bound to several keys is their concatenation along dimension 0, in the
// bindings' order (an official checkpoint's separate embeddings making one
// weight).
type Patch struct {
	Target   string
	Kind     string // "lora" (default), "diff", "loha", "lokr", "dora", "insert" (see below)
	Branch   map[string]any
	Bindings []Binding
}

// Binding fills one parameter of the branch from a file's tensor.
type Binding struct {
	File      string // File.ID
	Key       string // tensor key in that file
	Param     string // parameter path in the branch, e.g. "Linear_1.weight"
	Scale     float64
	Reshape   []int64 // reshape to this (empty: as is)
	Transpose bool    // swap the last two dims
}

// Report says how a plan used the files' keys.
type Report struct {
	Format          string
	Matched         []string
	Unmatched       []string
	ShapeMismatched []string
	Skipped         []string // keys of a component not being planned
	Covered         int      // layers adapted
	Layers          int      // candidate layers in the model
	EffectiveScales map[string]float64
	Warnings        []string
}
