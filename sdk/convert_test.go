package sdk

import (
	"reflect"
	"testing"

	"google.golang.org/protobuf/proto"
)

// wire encodes and decodes a message, as gRPC does.
func wire[M proto.Message](t *testing.T, m M) M {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	out := m.ProtoReflect().New().Interface().(M)
	if err := proto.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestPlainTypesSurviveTheWire: every field of a request, a plan and a
// description comes back from its protocol message as it went in.
func TestPlainTypesSurviveTheWire(t *testing.T) {
	alpha := 4.0
	req := &PlanRequest{Operation: "apply", Params: `{"scale": 0.5}`,
		Model: []Layer{{Path: "Chain.Linear", Type: "Linear",
			Params: map[string][]int64{"weight": {8, 4}, "bias": {8}}, DTypes: map[string]string{"weight": "float32", "bias": "bfloat16"}}},
		Files: []File{{ID: "file0", SHA256: "ab", Metadata: map[string]string{"ss_network_dim": "4"},
			Tensors: []Tensor{{Key: "down", DType: "float32", Shape: []int64{2, 4}}, {Key: "alpha", DType: "float32", Value: &alpha}}}}}
	if got := requestFromProto(wire(t, requestToProto(req))); !reflect.DeepEqual(got, req) {
		t.Errorf("request:\n got %#v\nwant %#v", got, req)
	}
	plan := &Plan{
		Patches: []Patch{{Target: "Chain.Linear", Kind: "lokr",
			Branch:   map[string]any{"type": "LoKr", "rank": 2.0, "weight_shape": []any{8.0, 4.0}, "name": "a<b>"},
			Bindings: []Binding{{File: "file0", Key: "down", Param: "lokr_w1", Scale: 0.25, Reshape: []int64{2, 4}, Transpose: true}}}},
		Report: &Report{Format: "kohya", Matched: []string{"down"}, Unmatched: []string{"x"}, ShapeMismatched: []string{"y"}, Skipped: []string{"z"},
			Covered: 1, Layers: 3, EffectiveScales: map[string]float64{"Chain.Linear": 2}, Warnings: []string{"w"}},
	}
	pp, err := planToProto(plan)
	if err != nil {
		t.Fatal(err)
	}
	back, err := planFromProto(wire(t, pp))
	if err != nil || !reflect.DeepEqual(back, plan) {
		t.Errorf("plan (%v):\n got %#v\nwant %#v", err, back, plan)
	}
	desc := &Description{Name: "p", Version: "1.0.0", Protocol: ProtocolVersion,
		Operations: []Operation{{Name: "apply", Doc: "d", ParamsSchema: `{"type": "object"}`, Example: req}},
		LayerTypes: []LayerType{{Name: "Scaled", Doc: "x", Spec: "refiners: 1"}}}
	pd, err := descriptionToProto(desc)
	if err != nil {
		t.Fatal(err)
	}
	if got := descriptionFromProto(wire(t, pd)); !reflect.DeepEqual(got, desc) {
		t.Errorf("description:\n got %#v\nwant %#v", got, desc)
	}
}
