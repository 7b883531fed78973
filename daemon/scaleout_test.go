package daemon

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func scale(v float64) *float64 { return &v }

// TestAdapterSetDigest: the routing key is stable (parameter order does
// not matter) and tells apart every field that changes the adapter set.
func TestAdapterSetDigest(t *testing.T) {
	lora := []AdapterRequest{{Plugin: "lora", File: "a", Params: map[string]any{"x": 1, "y": "z"}, Scale: scale(0.5)}}
	base := AdapterSetDigest("m", lora, false)
	if !strings.HasPrefix(base, "sha256:") || len(base) != 71 {
		t.Fatalf("digest %q", base)
	}
	same := []AdapterRequest{{Plugin: "lora", File: "a", Params: map[string]any{"y": "z", "x": 1}, Scale: scale(0.5)}}
	if got := AdapterSetDigest("m", same, false); got != base {
		t.Errorf("same set, params in another order: %s != %s", got, base)
	}
	if AdapterSetDigest("m", nil, false) != AdapterSetDigest("m", []AdapterRequest{}, false) {
		t.Error("nil and empty adapter lists differ")
	}
	others := map[string]string{
		"model":     AdapterSetDigest("n", lora, false),
		"fuse":      AdapterSetDigest("m", lora, true),
		"file":      AdapterSetDigest("m", []AdapterRequest{{Plugin: "lora", File: "b", Params: lora[0].Params, Scale: scale(0.5)}}, false),
		"plugin":    AdapterSetDigest("m", []AdapterRequest{{Plugin: "lorb", File: "a", Params: lora[0].Params, Scale: scale(0.5)}}, false),
		"operation": AdapterSetDigest("m", []AdapterRequest{{Plugin: "lora", File: "a", Operation: "o", Params: lora[0].Params, Scale: scale(0.5)}}, false),
		"params":    AdapterSetDigest("m", []AdapterRequest{{Plugin: "lora", File: "a", Params: map[string]any{"x": 2, "y": "z"}, Scale: scale(0.5)}}, false),
		"scale":     AdapterSetDigest("m", []AdapterRequest{{Plugin: "lora", File: "a", Params: lora[0].Params, Scale: scale(0.7)}}, false),
		"no scale":  AdapterSetDigest("m", []AdapterRequest{{Plugin: "lora", File: "a", Params: lora[0].Params}}, false),
		"none":      AdapterSetDigest("m", nil, false),
		"two":       AdapterSetDigest("m", append(lora, lora...), false),
	}
	seen := map[string]string{base: "base"}
	for name, d := range others {
		if prev, dup := seen[d]; dup {
			t.Errorf("%s and %s give the same digest", name, prev)
		}
		seen[d] = name
	}
}

// slowModel registers a model whose run takes a noticeable time (a
// 1024x1024 linear layer on a large batch), and returns a run request.
func slowModel(t *testing.T, td *testDaemon) string {
	t.Helper()
	w := writeZeros(t, filepath.Join(td.dir, "big.safetensors"), map[string][]int64{"Linear.weight": {1024, 1024}, "Linear.bias": {1024}})
	td.addModel(t, "big", "refiners: 1\nlayers:\n  - Linear: {in_features: 1024, out_features: 1024}\n", w, nil)
	data := strings.TrimSuffix(strings.Repeat("0,", 1024*16), ",")
	return fmt.Sprintf(`{"model":"big","inputs":{"input.0":{"dtype":"float32","shape":[16,1024],"data":[%s]}}}`, data)
}

// TestDrainFinishesTakenJobsAndRefusesNewOnes: after POST
// /v1/admin/drain, /readyz fails, new runs get 503 with Retry-After, and
// the jobs taken before (queued or running) all finish.
func TestDrainFinishesTakenJobsAndRefusesNewOnes(t *testing.T) {
	td := newTestDaemon(t, func(c *Config) { c.Replica = "replica-a" })
	req := slowModel(t, td)
	var ids []string
	for range 6 {
		code, b := td.post(t, "/v1/jobs", req)
		if code != http.StatusAccepted {
			t.Fatalf("submit: %d %s", code, b)
		}
		var st JobStatus
		json.Unmarshal(b, &st)
		ids = append(ids, st.ID)
	}
	code, b := td.post(t, "/v1/admin/drain", "")
	var ds DrainStatus
	if err := json.Unmarshal(b, &ds); code != http.StatusAccepted || err != nil || !ds.Draining {
		t.Fatalf("drain: %d %s", code, b)
	}
	if ds.Queued+ds.Running == 0 {
		t.Fatalf("the jobs ended before the drain (%s): nothing was tested; make the model slower", b)
	}
	if code, b := td.do(t, "GET", "/readyz", "", nil); code != http.StatusServiceUnavailable || !strings.Contains(string(b), "draining") {
		t.Errorf("/readyz while draining: %d %s", code, b)
	}
	resp, err := http.Post(td.srv.URL+"/v1/run", "application/json", strings.NewReader(req))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || resp.Header.Get(ReplicaHeader) != "replica-a" {
		t.Errorf("run while draining: %d, Retry-After %q, replica %q", resp.StatusCode, resp.Header.Get("Retry-After"), resp.Header.Get(ReplicaHeader))
	}
	for _, id := range ids {
		var st JobStatus
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			_, b := td.do(t, "GET", "/v1/jobs/"+id, "", nil)
			json.Unmarshal(b, &st)
			if st.State != Queued && st.State != Running {
				break
			}
		}
		if st.State != Done {
			t.Errorf("job %s taken before the drain: %+v", id, st)
		}
	}
	_, b = td.do(t, "GET", "/metrics", "", nil)
	if !strings.Contains(string(b), "refinersd_draining 1") {
		t.Error("metrics lack refinersd_draining 1")
	}
}

// TestPreloadGatesReadiness: /readyz fails until the preloaded model is
// warm, also when it is added to the store after the daemon started.
func TestPreloadGatesReadiness(t *testing.T) {
	old := preloadRetry
	preloadRetry = 50 * time.Millisecond
	t.Cleanup(func() { preloadRetry = old })
	td := newTestDaemon(t, func(c *Config) { c.Preload = []string{"lin"}; c.KeepAlive = time.Millisecond })
	if code, b := td.do(t, "GET", "/readyz", "", nil); code != http.StatusServiceUnavailable || !strings.Contains(string(b), "model lin") {
		t.Fatalf("/readyz before the model exists: %d %s", code, b)
	}
	w := writeZeros(t, filepath.Join(td.dir, "linear.safetensors"), map[string][]int64{"Linear.weight": {8, 4}, "Linear.bias": {8}})
	td.addModel(t, "lin", linearSpec, w, nil)
	code := 0
	for deadline := time.Now().Add(10 * time.Second); code != 200 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		code, _ = td.do(t, "GET", "/readyz", "", nil)
	}
	if code != 200 {
		t.Fatalf("/readyz after the model was added: %d", code)
	}
	time.Sleep(100 * time.Millisecond) // many keep-alives: a preloaded model stays
	if code, b := td.do(t, "GET", "/readyz", "", nil); code != 200 {
		t.Errorf("/readyz after idling past keep_alive: %d %s", code, b)
	}
}

// TestPreloadedPipelineGatesReadiness: a pipeline with preload set that
// does not load keeps /readyz failing, and says which.
func TestPreloadedPipelineGatesReadiness(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"unet", "text_encoder", "autoencoder"} {
		os.WriteFile(filepath.Join(dir, f+".safetensors"), []byte("not safetensors"), 0o644)
	}
	td := newTestDaemon(t, func(c *Config) {
		c.Pipelines = map[string]PipelineConfig{"tiny": {Weights: dir, Preload: true}}
	})
	time.Sleep(500 * time.Millisecond) // the load fails at once; the retry waits preloadRetry
	code, body := td.do(t, "GET", "/readyz", "", nil)
	if code != http.StatusServiceUnavailable || !strings.Contains(string(body), "pipeline/tiny") {
		t.Errorf("/readyz with a preloaded pipeline that fails: %d %s", code, body)
	}
}

// TestRoutingHeaders: a run's answer carries the adapter-set digest the
// daemon computed and the replica's name.
func TestRoutingHeaders(t *testing.T) {
	td := newTestDaemon(t, func(c *Config) { c.Replica = "r1" })
	w := writeZeros(t, filepath.Join(td.dir, "linear.safetensors"), map[string][]int64{"Linear.weight": {8, 4}, "Linear.bias": {8}})
	td.addModel(t, "lin", linearSpec, w, nil)
	resp, err := http.Post(td.srv.URL+"/v1/run", "application/json",
		strings.NewReader(`{"model":"lin","inputs":{"input.0":{"dtype":"float32","shape":[1,4],"data":[1,2,3,4]}}}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get(AdapterSetHeader) != AdapterSetDigest("lin", nil, false) || resp.Header.Get(ReplicaHeader) != "r1" {
		t.Errorf("run: %d, headers %v", resp.StatusCode, resp.Header)
	}
}
