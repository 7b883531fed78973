package sdk

import (
	"encoding/json"
	"fmt"

	pb "github.com/refiners-go/refiners/pluginproto"
)

// Conversions between the plain types and the protocol's messages, used on
// both sides of the wire.

func descriptionToProto(d *Description) (*pb.Description, error) {
	out := &pb.Description{Name: d.Name, Version: d.Version, Protocol: d.Protocol}
	if out.Protocol == 0 {
		out.Protocol = ProtocolVersion
	}
	for _, op := range d.Operations {
		o := &pb.Operation{Name: op.Name, Doc: op.Doc, ParamsSchema: op.ParamsSchema}
		if op.Example != nil {
			o.Example = requestToProto(op.Example)
		}
		out.Operations = append(out.Operations, o)
	}
	for _, lt := range d.LayerTypes {
		out.LayerTypes = append(out.LayerTypes, &pb.LayerType{Name: lt.Name, Doc: lt.Doc, Spec: lt.Spec})
	}
	return out, nil
}

func descriptionFromProto(d *pb.Description) *Description {
	out := &Description{Name: d.GetName(), Version: d.GetVersion(), Protocol: d.GetProtocol()}
	for _, op := range d.GetOperations() {
		o := Operation{Name: op.GetName(), Doc: op.GetDoc(), ParamsSchema: op.GetParamsSchema()}
		if op.GetExample() != nil {
			o.Example = requestFromProto(op.GetExample())
		}
		out.Operations = append(out.Operations, o)
	}
	for _, lt := range d.GetLayerTypes() {
		out.LayerTypes = append(out.LayerTypes, LayerType{Name: lt.GetName(), Doc: lt.GetDoc(), Spec: lt.GetSpec()})
	}
	return out
}

func requestToProto(r *PlanRequest) *pb.PlanRequest {
	out := &pb.PlanRequest{Operation: r.Operation, ParamsJson: r.Params}
	for _, l := range r.Model {
		pl := &pb.Layer{Path: l.Path, Type: l.Type}
		for _, name := range sortedKeys(l.Params) {
			pl.Params = append(pl.Params, &pb.Param{Name: name, Shape: l.Params[name], Dtype: l.DTypes[name]})
		}
		out.Model = append(out.Model, pl)
	}
	for _, f := range r.Files {
		pf := &pb.WeightFile{Id: f.ID, Sha256: f.SHA256, Metadata: f.Metadata}
		for _, t := range f.Tensors {
			pf.Tensors = append(pf.Tensors, &pb.TensorInfo{Key: t.Key, Dtype: t.DType, Shape: t.Shape, Value: t.Value})
		}
		out.Files = append(out.Files, pf)
	}
	return out
}

func requestFromProto(r *pb.PlanRequest) *PlanRequest {
	out := &PlanRequest{Operation: r.GetOperation(), Params: r.GetParamsJson()}
	for _, l := range r.GetModel() {
		layer := Layer{Path: l.GetPath(), Type: l.GetType(), Params: map[string][]int64{}, DTypes: map[string]string{}}
		for _, p := range l.GetParams() {
			layer.Params[p.GetName()] = p.GetShape()
			layer.DTypes[p.GetName()] = p.GetDtype()
		}
		out.Model = append(out.Model, layer)
	}
	for _, f := range r.GetFiles() {
		file := File{ID: f.GetId(), SHA256: f.GetSha256(), Metadata: f.GetMetadata()}
		for _, t := range f.GetTensors() {
			file.Tensors = append(file.Tensors, Tensor{Key: t.GetKey(), DType: t.GetDtype(), Shape: t.GetShape(), Value: t.Value})
		}
		out.Files = append(out.Files, file)
	}
	return out
}

func planToProto(p *Plan) (*pb.PlanResponse, error) {
	out := &pb.PlanResponse{}
	for i, q := range p.Patches {
		branch, err := json.Marshal(q.Branch)
		if err != nil {
			return nil, Error(Internal, "patch %d (%s): branch: %v", i, q.Target, err)
		}
		pp := &pb.Patch{Target: q.Target, Kind: q.Kind, BranchJson: string(branch)}
		for _, b := range q.Bindings {
			pp.Bindings = append(pp.Bindings, &pb.Binding{File: b.File, Key: b.Key, Param: b.Param, Scale: b.Scale, Reshape: b.Reshape, Transpose: b.Transpose})
		}
		out.Patches = append(out.Patches, pp)
	}
	if r := p.Report; r != nil {
		out.Report = &pb.Report{Format: r.Format, Matched: r.Matched, Unmatched: r.Unmatched, ShapeMismatched: r.ShapeMismatched,
			Skipped: r.Skipped, Covered: int32(r.Covered), Layers: int32(r.Layers), EffectiveScales: r.EffectiveScales, Warnings: r.Warnings}
	}
	return out, nil
}

func planFromProto(p *pb.PlanResponse) (*Plan, error) {
	out := &Plan{}
	for i, q := range p.GetPatches() {
		var branch map[string]any
		if err := json.Unmarshal([]byte(q.GetBranchJson()), &branch); err != nil {
			return nil, fmt.Errorf("patch %d (%s): branch is not a JSON object: %v", i, q.GetTarget(), err)
		}
		patch := Patch{Target: q.GetTarget(), Kind: q.GetKind(), Branch: branch}
		for _, b := range q.GetBindings() {
			patch.Bindings = append(patch.Bindings, Binding{File: b.GetFile(), Key: b.GetKey(), Param: b.GetParam(), Scale: b.GetScale(),
				Reshape: b.GetReshape(), Transpose: b.GetTranspose()})
		}
		out.Patches = append(out.Patches, patch)
	}
	if r := p.GetReport(); r != nil {
		out.Report = &Report{Format: r.GetFormat(), Matched: r.GetMatched(), Unmatched: r.GetUnmatched(), ShapeMismatched: r.GetShapeMismatched(),
			Skipped: r.GetSkipped(), Covered: int(r.GetCovered()), Layers: int(r.GetLayers()), EffectiveScales: r.GetEffectiveScales(), Warnings: r.GetWarnings()}
	}
	return out, nil
}
