package conformance

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/convert"
	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/spec"
)

// convertSource is one source a case converts.
type convertSource struct {
	Path      string `json:"path"`
	Component string `json:"component"`
	EMA       bool   `json:"ema"`
}

func (c convertSource) id() string { return fmt.Sprintf("%s|%s|%v", c.Path, c.Component, c.EMA) }

// TestConvert converts every source of generate_convert.py (diffusers
// pipeline and component folders, original single files in safetensors
// and as a float16 Lightning .ckpt, bfloat16 weights, the EMA copy) with
// the Go converter, the pipeline through the refinersd binary, then runs
// each converted model with its spec and compares the output with the
// diffusers / transformers model's (checkRef64). The spec parameters the
// converter infers must be the model's. ControlNet (which runs only inside
// a U-Net: TestControlnet) must convert to exactly the state dict Refiners'
// own conversion gives and fit specs/sd15_controlnet.yaml.
// CONFORMANCE_TIER=full runs testdata/full/convert.
func TestConvert(t *testing.T) {
	dir := "testdata/convert"
	if os.Getenv("CONFORMANCE_TIER") == "full" {
		dir = "testdata/full/convert"
	}
	cases, _ := filepath.Glob(filepath.Join(dir, "*.case.safetensors"))
	if len(cases) == 0 {
		t.Skipf("no conversion cases in %s yet", dir)
	}
	tmp := t.TempDir()
	converted := map[string]string{}

	// The pipeline folder through the binary, as a user runs it.
	bin := filepath.Join(tmp, "refinersd")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/refinersd").CombinedOutput(); err != nil {
		t.Fatalf("building refinersd: %v\n%s", err, out)
	}
	outDir := filepath.Join(tmp, "pipeline")
	out, err := exec.Command(bin, "convert", filepath.Join(dir, "pipeline"), "--to", outDir).CombinedOutput()
	if err != nil {
		t.Fatalf("refinersd convert: %v\n%s", err, out)
	}
	for _, want := range []string{"unet/, diffusers layout", "text_encoder/, diffusers layout", "vae/, diffusers layout",
		"skipped safety_checker/", "wrote unet: ", "wrote text_encoder: ", "wrote autoencoder: "} {
		if !strings.Contains(string(out), want) {
			t.Errorf("refinersd convert output lacks %q:\n%s", want, out)
		}
	}
	for _, comp := range []string{"unet", "text_encoder", "autoencoder"} {
		converted[convertSource{Path: "pipeline", Component: comp}.id()] = filepath.Join(outDir, comp+".safetensors")
	}

	var rows []string
	for _, path := range cases {
		name := strings.TrimSuffix(filepath.Base(path), ".case.safetensors")
		t.Run(name, func(t *testing.T) {
			f, err := weights.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			meta := f.Metadata()
			var params map[string]string
			var sources []convertSource
			if err := json.Unmarshal([]byte(meta["params"]), &params); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal([]byte(meta["sources"]), &sources); err != nil {
				t.Fatal(err)
			}
			for _, src := range sources {
				file, err := convertOnce(t, converted, dir, tmp, src, params)
				if err != nil {
					t.Fatalf("%s: %v", src.Path, err)
				}
				c, err := runConverted(f, meta, params, file)
				status := "pass"
				switch {
				case err != nil:
					t.Errorf("%s: %v", src.Path, err)
					status = "ERROR"
				case !c.Pass:
					t.Errorf("%s: %s", src.Path, c)
					status = "FAIL"
				}
				rows = append(rows, fmt.Sprintf("%-16s %-18s %-10.3g %-10.3g %-6.2f %s", name, src.Path, c.Err, c.RefErr, c.Ratio, status))
			}
		})
	}
	t.Run("controlnet", func(t *testing.T) {
		checkControlnet(t, dir, tmp, converted)
	})
	slices.Sort(rows)
	publishReport(t, fmt.Sprintf("%-16s %-18s %-10s %-10s %-6s %s\n%s\n", "conversion case", "source",
		"|go-ref64|", "|ref32-64|", "ratio", "result", strings.Join(rows, "\n")))
}

// convertOnce converts a source (once per source and options) through the
// convert package. Single files carry no config.json: the parameters a
// config would give come from the case, as --param does.
func convertOnce(t *testing.T, converted map[string]string, dir, tmp string, src convertSource, params map[string]string) (string, error) {
	if p, ok := converted[src.id()]; ok {
		return p, nil
	}
	full := filepath.Join(dir, src.Path)
	o := convert.Options{Component: src.Component, EMA: src.EMA, Params: map[string]string{}}
	if st, err := os.Stat(full); err == nil && !st.IsDir() {
		table, _ := convert.TableOf(src.Component)
		for k, v := range params {
			if table.Params[k].Config != "" {
				o.Params[src.Component+"."+k] = v
			}
		}
	}
	out := filepath.Join(tmp, strings.NewReplacer("/", "_", "|", "_").Replace(src.id())+".safetensors")
	if err := convertFile(full, out, o); err != nil {
		return "", err
	}
	// The metadata names the source by digest.
	f, err := weights.Open(out)
	if err != nil {
		return "", err
	}
	defer f.Close()
	meta := f.Metadata()
	if st, _ := os.Stat(full); !st.IsDir() {
		if want := fileDigest(t, full); meta["source_digest"] != want {
			t.Errorf("%s: source_digest %s, want %s", src.Path, meta["source_digest"], want)
		}
	}
	if meta["converter"] != convert.Version || meta["component"] != src.Component {
		t.Errorf("%s: metadata %v", src.Path, meta)
	}
	converted[src.id()] = out
	return out, nil
}

func convertFile(src, out string, o convert.Options) error {
	s, err := convert.Open(src, o)
	if err != nil {
		return err
	}
	defer s.Close()
	d, err := convert.Detect(s, o)
	if err != nil {
		return err
	}
	paths, err := convert.OutputPaths(d, out)
	if err != nil {
		return err
	}
	_, err = convert.Convert(context.Background(), d, paths, o)
	return err
}

func fileDigest(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(h[:])
}

// runConverted builds the case's spec with the parameters the converter
// wrote, checks them against the case's, loads the converted file
// strictly and compares the output.
func runConverted(f *weights.File, meta, params map[string]string, file string) (Diff, error) {
	var c Diff
	wf, err := weights.Open(file)
	if err != nil {
		return c, err
	}
	defer wf.Close()
	var inferred map[string]string
	if err := json.Unmarshal([]byte(wf.Metadata()["spec_params"]), &inferred); err != nil {
		return c, fmt.Errorf("spec_params: %w", err)
	}
	for k, want := range params {
		a, _ := strconv.ParseFloat(inferred[k], 64)
		b, _ := strconv.ParseFloat(want, 64)
		if a != b {
			return c, fmt.Errorf("converter says %s=%s, the model has %s", k, inferred[k], want)
		}
	}
	sp, err := spec.Load(filepath.Join("..", meta["spec"]))
	if err != nil {
		return c, err
	}
	m, err := sp.Build(inferred)
	if err != nil {
		return c, err
	}
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
		if _, err := core.LoadState(s, m, wf, core.LoadOptions{Strict: true, Prefix: meta["prefix"]}); err != nil {
			return err
		}
		defer core.ReleaseParams(m)
		call := core.Call{Contexts: core.Contexts{}}
		var inputs []*tensor.Tensor
		for _, k := range f.Keys() {
			if rest, ok := strings.CutPrefix(k, "context."); ok {
				name, key, _ := strings.Cut(rest, ".")
				if call.Contexts[name] == nil {
					call.Contexts[name] = map[string]any{}
				}
				call.Contexts[name][key] = f.Load(s, k)
			}
		}
		for i := 0; ; i++ {
			if _, ok := f.Info(fmt.Sprintf("input.%d", i)); !ok {
				break
			}
			inputs = append(inputs, f.Load(s, fmt.Sprintf("input.%d", i)))
		}
		outs, err := call.Forward(s, m, inputs...)
		if err != nil {
			return err
		}
		ref, err := ReadReference(f, "output.0")
		if err != nil {
			return err
		}
		c = ref.Check(s, outs[0])
		if !slices.Equal(c.ShapeGot, c.Shape) {
			return fmt.Errorf("output shape %v, reference %v", c.ShapeGot, c.Shape)
		}
		return s.Err()
	})
	return c, err
}

// checkControlnet: the converted ControlNets (diffusers folder, original
// .pth) hold exactly the tensors of Refiners' own conversion.
func checkControlnet(t *testing.T, dir, tmp string, converted map[string]string) {
	ref, err := weights.Open(filepath.Join(dir, "controlnet_refiners.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	var sources []convertSource
	if err := json.Unmarshal([]byte(ref.Metadata()["sources"]), &sources); err != nil {
		t.Fatal(err)
	}
	// The ControlNets are made at the tiny U-Net's sizes (generate_convert.py);
	// a single file has no config, so its heads and groups come from there,
	// for the check against specs/sd15_controlnet.yaml.
	unet, err := weights.Open(filepath.Join(dir, "unet.case.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	var params map[string]string
	err = json.Unmarshal([]byte(unet.Metadata()["params"]), &params)
	unet.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, src := range sources {
		file, err := convertOnce(t, converted, dir, tmp, src, params)
		if err != nil {
			t.Fatalf("%s: %v", src.Path, err)
		}
		got, err := weights.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got.Keys(), ref.Keys()) {
			t.Errorf("%s: keys differ from Refiners' Controlnet state dict", src.Path)
		}
		for _, k := range ref.Keys() {
			want, _ := ref.Info(k)
			have, ok := got.Info(k)
			if !ok || !slices.Equal(have.Shape, want.Shape) || have.DType != want.DType {
				t.Errorf("%s: %s is %v %v, Refiners has %v %v", src.Path, k, have.DType, have.Shape, want.DType, want.Shape)
				continue
			}
			a, _ := got.Bytes(k)
			b, _ := ref.Bytes(k)
			if !bytes.Equal(a, b) {
				t.Errorf("%s: %s: values differ from Refiners'", src.Path, k)
			}
		}
		got.Close()
	}
}
