package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"mime/multipart"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
)

// daemonFixture is a store with two tiny real models (the CLIP text
// encoder and the SD 1.5 U-Net of the conformance cases), a LoRA for the
// text encoder, the LoRA and faulty plugins installed, and the refinersd
// binary.
type daemonFixture struct {
	dir, bin, store, plugins string
	lora                     string            // LoRA file
	inputs                   map[string]string // model -> input file (input.N, context.*)
}

var clipSets = []string{"--set", "embedding_dim=32", "--set", "max_sequence_length=16", "--set", "vocabulary_size=100",
	"--set", "num_layers=2", "--set", "num_attention_heads=4", "--set", "feedforward_dim=128"}

var unetSets = []string{"--set", "in_channels=4", "--set", "out_channels=4", "--set", "channels_1=4", "--set", "channels_2=8",
	"--set", "channels_3=12", "--set", "sinusoidal_embedding_dim=8", "--set", "timestep_embedding_dim=16",
	"--set", "clip_embedding_dim=8", "--set", "num_heads=2", "--set", "num_groups=2"}

const (
	clipCase = "../../conformance/testdata/specs/clip_text_tiny.safetensors"
	unetCase = "../../conformance/testdata/specs/sd15_unet_tiny.safetensors"
)

func buildBinaries(t *testing.T, dir string, pkgs map[string]string) {
	t.Helper()
	for out, pkg := range pkgs {
		if msg, err := exec.Command("go", "build", "-o", filepath.Join(dir, out), pkg).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, msg)
		}
	}
}

func newDaemonFixture(t *testing.T) *daemonFixture {
	t.Helper()
	dir := t.TempDir()
	f := &daemonFixture{dir: dir, bin: filepath.Join(dir, "refinersd"), store: filepath.Join(dir, "store"),
		plugins: filepath.Join(dir, "plugins"), lora: filepath.Join(dir, "ff-lora.safetensors"), inputs: map[string]string{}}
	buildBinaries(t, dir, map[string]string{"refinersd": ".", "lora": "../../plugins/lora", "faulty": "../../hosts/testdata/faulty"})
	f.cli(t, "plugins", "install", filepath.Join(dir, "lora"), "--dir", f.plugins)
	f.cli(t, "plugins", "install", filepath.Join(dir, "faulty"), "--dir", f.plugins)
	f.cli(t, append([]string{"models", "add", "clip", "--spec", "../../specs/clip_text.yaml", "--weights", clipCase, "--prefix", "param.", "--store", f.store}, clipSets...)...)
	f.cli(t, append([]string{"models", "add", "unet", "--spec", "../../specs/sd15_unet.yaml", "--weights", unetCase, "--prefix", "param.", "--store", f.store}, unetSets...)...)

	err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
		// Inputs only (the cases also hold parameters and outputs).
		for model, path := range map[string]string{"clip": clipCase, "unet": unetCase} {
			src, err := weights.Open(path)
			if err != nil {
				return err
			}
			in := map[string]*tensor.Tensor{}
			for _, k := range src.Keys() {
				if strings.HasPrefix(k, "input.") || strings.HasPrefix(k, "context.") {
					in[k] = src.Load(s, k)
				}
			}
			src.Close()
			f.inputs[model] = filepath.Join(dir, model+"-inputs.safetensors")
			if err := weights.Save(s, f.inputs[model], in, nil); err != nil {
				return err
			}
		}
		// A Refiners-layout LoRA on both feed-forward Linears of the first
		// transformer layer (rank 4), scaled up so it visibly matters.
		lora := map[string]*tensor.Tensor{}
		for i, shape := range [][2]int64{{128, 32}, {32, 128}} {
			down, up := core.NewParameter(4, shape[1]), core.NewParameter(shape[0], 4)
			if err := core.InitRandom(s, down, int64(10+i)); err != nil {
				return err
			}
			if err := core.InitRandom(s, up, int64(20+i)); err != nil {
				return err
			}
			key := fmt.Sprintf("CLIPTextEncoder.TransformerLayer_1.Residual_2.FeedForward.%d.Linear", i+1)
			lora[key+".down.weight"], lora[key+".up.weight"] = down.Weight, s.Scale(up.Weight, 3)
		}
		return weights.Save(s, f.lora, lora, nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	f.cli(t, "adapters", "add", "ff-lora", f.lora, "--store", f.store)
	return f
}

func (f *daemonFixture) cli(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(f.bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("refinersd %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// runDirect is `refinersd run` on a model of the fixture: the reference
// the daemon must reproduce bit for bit.
func (f *daemonFixture) runDirect(t *testing.T, model string, extra ...string) map[string][]byte {
	t.Helper()
	spec, weightsFile, sets := "../../specs/clip_text.yaml", clipCase, clipSets
	if model == "unet" {
		spec, weightsFile, sets = "../../specs/sd15_unet.yaml", unetCase, unetSets
	}
	out := filepath.Join(f.dir, fmt.Sprintf("direct-%d.safetensors", time.Now().UnixNano()))
	args := append([]string{"run", spec, "--weights", weightsFile, "--prefix", "param.", "--input", f.inputs[model], "--output", out, "--plugins-dir", f.plugins}, sets...)
	f.cli(t, append(args, extra...)...)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return tensorsOf(t, b)
}

// tensorsOf reads every tensor of a safetensors file as raw bytes.
func tensorsOf(t *testing.T, b []byte) map[string][]byte {
	t.Helper()
	wf, err := weights.Parse("response", b)
	if err != nil {
		t.Fatal(err)
	}
	defer wf.Close()
	out := map[string][]byte{}
	for _, k := range wf.Keys() {
		out[k], err = wf.Bytes(k)
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// server is a running `refinersd serve`.
type server struct {
	cmd    *exec.Cmd
	url    string
	token  string
	stderr *bytes.Buffer
	done   chan error
}

func (f *daemonFixture) serve(t *testing.T, env []string, args ...string) *server {
	t.Helper()
	cmd := exec.Command(f.bin, append([]string{"serve", "--store", f.store, "--plugins-dir", f.plugins}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s := &server{cmd: cmd, stderr: &bytes.Buffer{}, done: make(chan error, 1)}
	cmd.Stderr = s.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("serve did not start: %v\n%s", err, s.stderr)
	}
	go func() { io.Copy(io.Discard, stdout); s.done <- cmd.Wait() }()
	s.url = strings.TrimSpace(strings.TrimPrefix(line, "refinersd listening on "))
	s.url = strings.Replace(s.url, "http://0.0.0.0:", "http://127.0.0.1:", 1)
	s.url = strings.Replace(s.url, "http://[::]:", "http://127.0.0.1:", 1)
	t.Cleanup(func() {
		if s.cmd.ProcessState == nil {
			s.cmd.Process.Kill()
			<-s.done
		}
	})
	return s
}

func (s *server) do(t *testing.T, method, path, contentType string, body io.Reader, header ...string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, s.url+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if s.token != "" {
		req.Header.Set("Authorization", "Bearer "+s.token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// multipartRun is a run request with the inputs as a safetensors part.
func multipartRun(t *testing.T, request any, inputsFile string) (string, *bytes.Buffer) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	rj, _ := json.Marshal(request)
	mw.WriteField("request", string(rj))
	part, _ := mw.CreateFormFile("inputs", "inputs.safetensors")
	b, err := os.ReadFile(inputsFile)
	if err != nil {
		t.Fatal(err)
	}
	part.Write(b)
	mw.Close()
	return mw.FormDataContentType(), &buf
}

func loraAdapter(scale float64) []map[string]any {
	return []map[string]any{{"plugin": "lora", "file": "ff-lora", "scale": scale}}
}

func TestServeMatchesRunBitForBit(t *testing.T) {
	f := newDaemonFixture(t)
	direct := map[string]map[string][]byte{
		"clip":      f.runDirect(t, "clip"),
		"unet":      f.runDirect(t, "unet"),
		"clip+lora": f.runDirect(t, "clip", "--adapter", "lora:"+f.lora+`:{"scale": 0.7}`),
		"clip+fuse": f.runDirect(t, "clip", "--adapter", "lora:"+f.lora+`:{"scale": 0.7}`, "--fuse"),
	}
	if bytes.Equal(direct["clip"]["output.0"], direct["clip+lora"]["output.0"]) {
		t.Fatal("the LoRA does not change the output: the test would prove nothing")
	}
	s := f.serve(t, nil, "--addr", "127.0.0.1:0")

	cases := []struct {
		name, model string
		adapters    []map[string]any
		fuse        bool
		wantLayers  int
	}{
		{"clip", "clip", nil, false, 0},
		{"unet", "unet", nil, false, 0},
		{"clip+lora", "clip", loraAdapter(0.7), false, 2},
		{"clip", "clip", nil, false, 0}, // after ejection: the base model again
		{"clip+fuse", "clip", loraAdapter(0.7), true, 2},
		{"clip", "clip", nil, false, 0}, // after unfusing
	}
	for i, c := range cases {
		req := map[string]any{"model": c.model, "adapters": c.adapters, "fuse": c.fuse}
		ct, body := multipartRun(t, req, f.inputs[c.model])
		code, hdr, b := s.do(t, "POST", "/v1/run", ct, body, "Accept", "application/vnd.safetensors")
		if code != 200 || hdr.Get("Content-Type") != "application/vnd.safetensors" {
			t.Fatalf("case %d %s: %d %s", i, c.name, code, b)
		}
		got := tensorsOf(t, b)
		if !bytes.Equal(got["output.0"], direct[c.name]["output.0"]) || len(got) != len(direct[c.name]) {
			t.Errorf("case %d %s: daemon output differs from refinersd run", i, c.name)
		}
		wf, _ := weights.Parse("response", b)
		meta := wf.Metadata()
		wf.Close()
		if c.wantLayers > 0 && !strings.Contains(meta["adapters"], fmt.Sprintf(`"layers_adapted":%d`, c.wantLayers)) {
			t.Errorf("case %d %s: adapters report %q", i, c.name, meta["adapters"])
		}
	}

	// The same through JSON, values and base64.
	inputs := map[string]any{}
	err := tensor.Run(context.Background(), func(sc *tensor.Scope) error {
		in, err := weights.Open(f.inputs["clip"])
		if err != nil {
			return err
		}
		defer in.Close()
		for _, k := range in.Keys() {
			info, _ := in.Info(k)
			vals := []float64{}
			raw, _ := in.Bytes(k)
			if info.DType != tensor.Int64 {
				t.Fatalf("%s: the CLIP input is token ids", k)
			}
			for i := 0; i < len(raw); i += 8 {
				vals = append(vals, float64(int64(binary.LittleEndian.Uint64(raw[i:]))))
			}
			inputs[k] = map[string]any{"dtype": info.DType.String(), "shape": info.Shape, "data": vals}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"json", "base64"} {
		body, _ := json.Marshal(map[string]any{"model": "clip", "inputs": inputs, "adapters": loraAdapter(0.7), "outputs": format})
		code, _, b := s.do(t, "POST", "/v1/run", "application/json", bytes.NewReader(body))
		if code != 200 {
			t.Fatalf("JSON run (%s): %d %s", format, code, b)
		}
		var resp struct {
			Outputs map[string]struct {
				Data       []float32 `json:"data"`
				DataBase64 []byte    `json:"data_base64"`
			} `json:"outputs"`
			Adapters []struct {
				Matched int  `json:"matched"`
				Reused  bool `json:"reused"`
			} `json:"adapters"`
		}
		if err := json.Unmarshal(b, &resp); err != nil {
			t.Fatal(err)
		}
		got := resp.Outputs["output.0"].DataBase64
		if format == "json" {
			var buf bytes.Buffer
			for _, v := range resp.Outputs["output.0"].Data {
				buf.Write(le32(v))
			}
			got = buf.Bytes()
		}
		if !bytes.Equal(got, direct["clip+lora"]["output.0"]) {
			t.Errorf("JSON run (%s): output differs from refinersd run", format)
		}
		if len(resp.Adapters) != 1 || resp.Adapters[0].Matched != 4 {
			t.Errorf("JSON run (%s): adapters report %s", format, b)
		}
		if format == "base64" && !resp.Adapters[0].Reused {
			t.Errorf("second run with the same LoRA did not reuse it: %s", b)
		}
	}

	// An async job: 202, streamed events, then the result.
	ct, body := multipartRun(t, map[string]any{"model": "unet"}, f.inputs["unet"])
	code, hdr, b := s.do(t, "POST", "/v1/jobs", ct, body)
	if code != 202 {
		t.Fatalf("POST /v1/jobs: %d %s", code, b)
	}
	var st struct{ ID, State string }
	json.Unmarshal(b, &st)
	if hdr.Get("Location") != "/v1/jobs/"+st.ID {
		t.Errorf("Location %q", hdr.Get("Location"))
	}
	code, _, b = s.do(t, "GET", "/v1/jobs/"+st.ID+"/events", "", nil, "Accept", "application/x-ndjson")
	var types []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var e struct{ Type string }
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("event line %q: %v", line, err)
		}
		types = append(types, e.Type)
	}
	if code != 200 || types[0] != "queued" || types[len(types)-1] != "done" || !slices.Contains(types, "progress") {
		t.Errorf("events: %d %v", code, types)
	}
	code, _, b = s.do(t, "GET", "/v1/jobs/"+st.ID+"/result", "", nil, "Accept", "application/vnd.safetensors")
	if code != 200 || !bytes.Equal(tensorsOf(t, b)["output.0"], direct["unet"]["output.0"]) {
		t.Errorf("job result: %d, or differs from refinersd run", code)
	}
	// SSE on a streamed run.
	ct, body = multipartRun(t, map[string]any{"model": "clip"}, f.inputs["clip"])
	code, _, b = s.do(t, "POST", "/v1/run", ct, body, "Accept", "text/event-stream")
	if code != 200 || !strings.Contains(string(b), "event: progress\ndata: ") || !strings.Contains(string(b), "event: result\ndata: ") {
		t.Errorf("SSE run: %d %.300s", code, b)
	}

	// Metrics count what happened.
	_, _, b = s.do(t, "GET", "/metrics", "", nil)
	for _, want := range []string{"refinersd_adapter_swaps_total 3", `refinersd_jobs_total{state="done"} 10`, "refinersd_queue_depth 0"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func le32(v float32) []byte { return binary.LittleEndian.AppendUint32(nil, math.Float32bits(v)) }

// TestPluginKilledMidRequest: a plugin killed while planning fails that
// request with a clear error; the next request starts it again.
func TestPluginKilledMidRequest(t *testing.T) {
	f := newDaemonFixture(t)
	s := f.serve(t, nil, "--addr", "127.0.0.1:0")
	want := f.runDirect(t, "clip", "--adapter", "lora:"+f.lora+`:{"scale": 0.7}`)

	ct, body := multipartRun(t, map[string]any{"model": "clip", "adapters": []map[string]any{{"plugin": "faulty", "file": "ff-lora", "operation": "hang"}}}, f.inputs["clip"])
	type result struct {
		code int
		body []byte
	}
	res := make(chan result, 1)
	go func() {
		code, _, b := s.do(t, "POST", "/v1/run", ct, body)
		res <- result{code, b}
	}()
	var pid int
	for deadline := time.Now().Add(20 * time.Second); pid == 0 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		_, _, b := s.do(t, "GET", "/v1/plugins", "", nil)
		var ps struct {
			Plugins []struct {
				Name string
				PID  int
			}
		}
		json.Unmarshal(b, &ps)
		for _, p := range ps.Plugins {
			if p.Name == "faulty" {
				pid = p.PID
			}
		}
	}
	if pid == 0 {
		t.Fatal("the faulty plugin never started")
	}
	time.Sleep(300 * time.Millisecond) // let the Plan call reach the plugin
	syscall.Kill(pid, syscall.SIGKILL)
	r := <-res
	if r.code != http.StatusBadGateway || !strings.Contains(string(r.body), "plugin faulty crashed during Plan") {
		t.Errorf("killed plugin: %d %s", r.code, r.body)
	}
	// The daemon is fine, the model has no half-applied adapter, and the
	// next request (with a working plugin) matches refinersd run.
	ct, body = multipartRun(t, map[string]any{"model": "clip", "adapters": loraAdapter(0.7)}, f.inputs["clip"])
	code, _, b := s.do(t, "POST", "/v1/run", ct, body, "Accept", "application/vnd.safetensors")
	if code != 200 || !bytes.Equal(tensorsOf(t, b)["output.0"], want["output.0"]) {
		t.Errorf("next request: %d %.200s", code, b)
	}
	// The faulty plugin itself restarts on its next call.
	ct, body = multipartRun(t, map[string]any{"model": "clip", "adapters": []map[string]any{{"plugin": "faulty", "file": "ff-lora", "operation": "ok"}}}, f.inputs["clip"])
	code, _, b = s.do(t, "POST", "/v1/run", ct, body)
	if code != http.StatusUnprocessableEntity || !strings.Contains(string(b), "the plan adapts no layer") {
		t.Errorf("faulty plugin after restart: %d %s", code, b)
	}
	_, _, b = s.do(t, "GET", "/metrics", "", nil)
	if !strings.Contains(string(b), `refinersd_plugin_restarts_total{plugin="faulty"} 1`) {
		t.Errorf("restart not counted")
	}
}
