package daemon

import (
	"encoding/binary"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// testDaemon is a daemon over a scratch store, served by httptest.
type testDaemon struct {
	d   *Daemon
	srv *httptest.Server
	dir string
}

func newTestDaemon(t testing.TB, configure func(*Config)) *testDaemon {
	t.Helper()
	dir := t.TempDir()
	cfg := Defaults()
	cfg.Store, cfg.PluginsDir = filepath.Join(dir, "store"), filepath.Join(dir, "plugins")
	if configure != nil {
		configure(&cfg)
	}
	d, err := New(cfg, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	td := &testDaemon{d: d, dir: dir, srv: httptest.NewServer(d.Handler())}
	t.Cleanup(func() {
		td.srv.Close()
		d.Close()
	})
	return td
}

// emptyWeights writes a safetensors file with no tensors.
func emptyWeights(t *testing.T, path string) string {
	t.Helper()
	header := []byte("{}      ")
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	if err := os.WriteFile(path, append(b, header...), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// addModel registers a model from spec source and a weights file (empty
// when weightsPath is "").
func (td *testDaemon) addModel(t *testing.T, name, specSrc, weightsPath string, overrides map[string]string) {
	t.Helper()
	dir := filepath.Join(td.dir, "specs", name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	specPath := filepath.Join(dir, "spec.yaml")
	if err := os.WriteFile(specPath, []byte(specSrc), 0o644); err != nil {
		t.Fatal(err)
	}
	if weightsPath == "" {
		weightsPath = emptyWeights(t, filepath.Join(dir, "empty.safetensors"))
	}
	if _, err := td.d.store.AddModel(name, specPath, weightsPath, overrides, ""); err != nil {
		t.Fatal(err)
	}
}

func (td *testDaemon) do(t *testing.T, method, path, contentType string, body io.Reader) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, td.srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (td *testDaemon) post(t *testing.T, path, body string) (int, []byte) {
	t.Helper()
	return td.do(t, "POST", path, "application/json", strings.NewReader(body))
}
