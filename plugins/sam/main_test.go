package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/adapt"
	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/hosts"
	_ "github.com/refiners-go/refiners/models/all"
	"github.com/refiners-go/refiners/models/sam/predict"
	"github.com/refiners-go/refiners/sdk"
	"github.com/refiners-go/refiners/torchfile"
)

const (
	officialFile = "../../conformance/testdata/sam_official/model.pth"
	refinersFile = "../../conformance/testdata/sam/predict_model.safetensors"
)

var bin string // the plugin, freshly built

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "refiners-sam-")
	if err != nil {
		panic(err)
	}
	bin = filepath.Join(dir, "sam")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		panic(string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// officialHeader is the small official checkpoint's header as a host
// would send it (keys, dtypes, shapes), in the file's order.
func officialHeader(t *testing.T) sdk.File {
	t.Helper()
	tf, err := torchfile.Open(officialFile)
	if err != nil {
		t.Fatal(err)
	}
	defer tf.Close()
	named, _, err := torchfile.Flatten(tf.Root())
	if err != nil {
		t.Fatal(err)
	}
	f := sdk.File{ID: "sam"}
	for _, n := range named {
		f.Tensors = append(f.Tensors, sdk.Tensor{Key: n.Key, DType: "float32", Shape: n.Tensor.Shape})
	}
	return f
}

// TestExample checks the embedded kit example against the official test
// checkpoint (UPDATE=1 rewrites it).
func TestExample(t *testing.T) {
	got, err := json.Marshal(&sdk.PlanRequest{Params: `{"decoder_heads": 8}`, Files: []sdk.File{officialHeader(t)}})
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("UPDATE") == "1" {
		if err := os.WriteFile("testdata/example.json", got, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Skip("testdata/example.json rewritten; rebuild and run again")
	}
	if !bytes.Equal(bytes.TrimSpace(exampleJSON), got) {
		t.Error("testdata/example.json is not the official test checkpoint's header: run UPDATE=1 go test -run TestExample ./plugins/sam")
	}
}

// TestKit runs the plugin conformance kit (refinersd plugins check).
func TestKit(t *testing.T) {
	results, err := hosts.Check(context.Background(), bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if !r.Passed {
			t.Errorf("kit: %s: %s", r.Name, r.Detail)
		}
	}
	if len(results) < 9 {
		t.Errorf("only %d kit checks ran", len(results))
	}
}

// TestPlanOfficial: the official layout's plan binds every key of the
// checkpoint once, with the transforms samkeys says, and concatenations
// as several bindings in order.
func TestPlanOfficial(t *testing.T) {
	f := officialHeader(t)
	p, err := planner{}.Plan(context.Background(), &sdk.PlanRequest{Operation: "load", Files: []sdk.File{f}})
	if err != nil {
		t.Fatal(err)
	}
	if p.Report.Format != "official" || len(p.Patches) != 4 {
		t.Fatalf("format %q, %d patches", p.Report.Format, len(p.Patches))
	}
	bound := map[string]int{}
	byParam := map[string][]sdk.Binding{}
	for _, patch := range p.Patches {
		for _, b := range patch.Bindings {
			bound[b.Key]++
			byParam[b.Param] = append(byParam[b.Param], b)
		}
	}
	for _, x := range f.Tensors {
		if bound[x.Key] != 1 {
			t.Errorf("%s bound %d times", x.Key, bound[x.Key])
		}
	}
	if bs := byParam["Residual.PointTypeEmbedding.weight"]; len(bs) != 5 || bs[4].Key != "prompt_encoder.not_a_point_embed.weight" || bs[0].Key != "prompt_encoder.point_embeddings.0.weight" {
		t.Errorf("point types bound as %v", bs)
	}
	if bs := byParam["CoordinateEncoder.Linear.weight"]; len(bs) != 1 || !bs[0].Transpose {
		t.Errorf("Gaussian matrix bound as %v", bs)
	}
	if bs := byParam["PositionalEncoder.Parameter.weight"]; len(bs) != 1 || !slices.Equal(bs[0].Reshape, []int64{8, 8, 16}) {
		t.Errorf("pos_embed bound as %v", bs)
	}
	// The models go in last first, each at index 0.
	if p.Patches[0].Branch["spec"] != "sam_mask_decoder.yaml" || p.Patches[3].Branch["spec"] != "sam.yaml" {
		t.Errorf("patch order: %v ... %v", p.Patches[0].Branch, p.Patches[3].Branch)
	}
}

// TestLoadThroughHost plans each layout through the installed plugin —
// Refiners' file, and the official checkpoint's tensors under their own
// keys in a safetensors file (the host reads safetensors) — applies the
// plan to an empty chain with adapt.Apply (concatenating the official
// embeddings), and checks the four models it builds against
// predict.Load's: same structure, the same weights bit for bit.
func TestLoadThroughHost(t *testing.T) {
	h, err := hosts.New(t.TempDir(), hosts.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	e, err := h.Install(context.Background(), bin)
	if err != nil {
		t.Fatal(err)
	}
	official := officialSafetensors(t)
	for _, c := range []struct{ format, file, reference string }{
		{"refiners", refinersFile, refinersFile},
		{"official", official, officialFile},
	} {
		t.Run(c.format, func(t *testing.T) {
			wf, err := weights.Open(c.file)
			if err != nil {
				t.Fatal(err)
			}
			defer wf.Close()
			plan, err := h.Plan(context.Background(), e.Name, &sdk.PlanRequest{Operation: "load", Files: []sdk.File{adapt.Header("sam", "", wf)}})
			if err != nil {
				t.Fatal(err)
			}
			if plan.Report.Format != c.format || len(plan.Report.Unmatched) != 0 {
				t.Errorf("report: %+v", plan.Report)
			}
			err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
				root := core.NewNamed("SegmentAnything", core.Sequence)
				applied, err := adapt.Apply(s, root, plan, map[string]*weights.File{"sam": wf})
				if err != nil {
					return err
				}
				defer applied.Eject()
				m, err := predict.Load(s, predict.Config{Weights: c.reference})
				if err != nil {
					return err
				}
				defer m.Release()
				children := root.Children()
				if len(children) != 4 {
					t.Fatalf("the plan built %d models, want 4", len(children))
				}
				for i, want := range []*core.Chain{m.ImageEncoder, m.PointEncoder, m.MaskEncoder, m.MaskDecoder} {
					got := children[i].(*core.Chain)
					if got.String() != want.String() {
						t.Errorf("model %d: tree differs from predict.Load's:\n%s\nwant\n%s", i, firstLines(got.String()), firstLines(want.String()))
					}
					gs, ws := core.StateDict(got), core.StateDict(want)
					if len(gs) != len(ws) {
						t.Fatalf("model %d: %d parameters, want %d", i, len(gs), len(ws))
					}
					for j := range gs {
						if gs[j].Key != ws[j].Key || !bytes.Equal(s.Bytes(*gs[j].Value), s.Bytes(*ws[j].Value)) {
							t.Errorf("model %d: parameter %s differs from %s", i, gs[j].Key, ws[j].Key)
						}
					}
				}
				return s.Err()
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// officialSafetensors writes the official test checkpoint's tensors, keys
// unchanged, as a safetensors file.
func officialSafetensors(t *testing.T) string {
	t.Helper()
	tf, err := torchfile.Open(officialFile)
	if err != nil {
		t.Fatal(err)
	}
	defer tf.Close()
	named, _, err := torchfile.Flatten(tf.Root())
	if err != nil {
		t.Fatal(err)
	}
	raws := map[string]weights.Raw{}
	for _, n := range named {
		b, release, err := n.Tensor.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		raws[n.Key] = weights.Raw{DType: tensor.Float32, Shape: n.Tensor.Shape, Data: slices.Clone(b)}
		release()
	}
	var buf bytes.Buffer
	if err := weights.Encode(&buf, raws, nil); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "official.safetensors")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func firstLines(s string) string {
	lines := strings.SplitN(s, "\n", 6)
	return strings.Join(lines[:min(5, len(lines))], "\n")
}

func TestRefusals(t *testing.T) {
	good := officialHeader(t)
	drop := func(key string) sdk.File {
		f := sdk.File{ID: "sam"}
		for _, x := range good.Tensors {
			if x.Key != key {
				f.Tensors = append(f.Tensors, x)
			}
		}
		return f
	}
	for _, c := range []struct {
		name string
		req  *sdk.PlanRequest
		want string
	}{
		{"no file", &sdk.PlanRequest{Operation: "load"}, "want one"},
		{"two files", &sdk.PlanRequest{Operation: "load", Files: []sdk.File{good, good}}, "want one"},
		{"bad heads", &sdk.PlanRequest{Operation: "load", Params: `{"decoder_heads": 0}`, Files: []sdk.File{good}}, "decoder_heads"},
		{"unknown param", &sdk.PlanRequest{Operation: "load", Params: `{"heads": 2}`, Files: []sdk.File{good}}, "unknown field"},
		{"not SAM", &sdk.PlanRequest{Operation: "load", Files: []sdk.File{{ID: "x", Tensors: []sdk.Tensor{{Key: "a.weight", Shape: []int64{1}}}}}}, "not Segment Anything"},
		{"incomplete", &sdk.PlanRequest{Operation: "load", Files: []sdk.File{drop("mask_decoder.mask_tokens.weight")}}, "missing"},
		{"operation", &sdk.PlanRequest{Operation: "apply", Files: []sdk.File{good}}, "unknown operation"},
	} {
		_, err := planner{}.Plan(context.Background(), c.req)
		if err == nil || sdk.CodeOf(err) != sdk.InvalidArgument || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v (code %v), want InvalidArgument containing %q", c.name, err, sdk.CodeOf(err), c.want)
		}
	}
}
