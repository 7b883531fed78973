package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestServeSecurity: off loopback a token is required to start and on
// every request; every name, digest and file field refuses traversal and
// malformed values with 400; oversized bodies get 413.
func TestServeSecurity(t *testing.T) {
	f := newDaemonFixture(t)

	// Listening on all interfaces without a token: refused at start.
	out, err := exec.Command(f.bin, "serve", "--addr", "0.0.0.0:0", "--store", f.store, "--plugins-dir", f.plugins).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "is not a loopback address: set a token") {
		t.Fatalf("serve on 0.0.0.0 without a token: %v\n%s", err, out)
	}

	const token = "s3cret-token-for-tests"
	s := f.serve(t, []string{"REFINERSD_TOKEN=" + token}, "--addr", "0.0.0.0:0", "--max-body", "65536")
	for _, c := range []struct{ method, path, auth string }{
		{"GET", "/v1/models", ""},
		{"GET", "/v1/models", "Bearer wrong-token-of-some-length"},
		{"GET", "/v1/models", token}, // no "Bearer "
		{"POST", "/v1/run", ""},
		{"GET", "/metrics", ""},
		{"GET", "/v1/jobs", "Basic " + token},
	} {
		code, hdr, b := s.do(t, c.method, c.path, "", nil, "Authorization", c.auth)
		if code != http.StatusUnauthorized || !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s %s with %q: %d %s", c.method, c.path, c.auth, code, b)
		}
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, _, _ := s.do(t, "GET", path, "", nil); code != 200 {
			t.Errorf("%s without a token: %d (probes are open)", path, code)
		}
	}
	s.token = token
	if code, _, b := s.do(t, "GET", "/v1/models", "", nil); code != 200 || !strings.Contains(string(b), `"clip"`) {
		t.Fatalf("with the token: %d %s", code, b)
	}

	run := func(req map[string]any) (int, string) {
		ct, body := multipartRun(t, req, f.inputs["clip"])
		code, _, b := s.do(t, "POST", "/v1/run", ct, body)
		return code, string(b)
	}
	bad := []string{"../clip", "..", "../../etc/passwd", "/etc/passwd", "clip/../unet", "%2e%2e", "Clip", "a\x00b", strings.Repeat("x", 65), ""}
	badDigests := []string{"sha256:../../etc/passwd", "sha256:" + strings.Repeat("g", 64), "sha256:" + strings.Repeat("0", 63), "md5:d41d8cd98f00b204e9800998ecf8427e", "sha256:"}
	for _, name := range bad {
		if code, b := run(map[string]any{"model": name}); code != 400 {
			t.Errorf("run model %q: %d %s", name, code, b)
		}
		if code, b := run(map[string]any{"model": "clip", "adapters": []map[string]any{{"plugin": "lora", "file": name}}}); code != 400 {
			t.Errorf("adapter file %q: %d %s", name, code, b)
		}
		if code, b := run(map[string]any{"model": "clip", "adapters": []map[string]any{{"plugin": name, "file": "ff-lora"}}}); code != 400 {
			t.Errorf("adapter plugin %q: %d %s", name, code, b)
		}
	}
	for _, d := range badDigests {
		if code, b := run(map[string]any{"model": "clip", "adapters": []map[string]any{{"plugin": "lora", "file": d}}}); code != 400 {
			t.Errorf("adapter digest %q: %d %s", d, code, b)
		}
	}
	// Path parameters, escaped so that the router sees them as one segment.
	for _, p := range []string{
		"/v1/models/..%2f..%2fetc%2fpasswd", "/v1/models/%2e%2e", "/v1/models/Clip", "/v1/models/a%00b",
		"/v1/jobs/..%2f..%2fetc", "/v1/jobs/" + strings.Repeat("z", 24), "/v1/jobs/%2e%2e/result",
	} {
		if code, _, b := s.do(t, "GET", p, "", nil); code != 400 {
			t.Errorf("GET %s: %d %s", p, code, b)
		}
	}
	for _, p := range []string{"/v1/models/..%2fx/load", "/v1/models/%2e%2e/unload"} {
		if code, _, b := s.do(t, "POST", p, "", nil); code != 400 {
			t.Errorf("POST %s: %d %s", p, code, b)
		}
	}
	for _, d := range append(badDigests, "..%2f..%2fblobs") {
		if code, _, b := s.do(t, "PUT", "/v1/blobs/"+d, "", strings.NewReader("x")); code != 400 {
			t.Errorf("PUT blob %q: %d %s", d, code, b)
		}
	}
	// A blob whose content does not match its digest is refused, and
	// nothing is kept.
	if code, _, b := s.do(t, "PUT", "/v1/blobs/sha256:"+strings.Repeat("0", 64), "", strings.NewReader("not that")); code != 400 || !strings.Contains(string(b), "its digest is sha256:") {
		t.Errorf("PUT blob with the wrong content: %d %s", code, b)
	}
	// Bad input tensor names and shapes.
	for name, body := range map[string]string{
		"traversal name":  `{"model":"clip","inputs":{"../input.0":{"dtype":"int64","shape":[1],"data":[1]}}}`,
		"param name":      `{"model":"clip","inputs":{"input.0":{"dtype":"int64","shape":[1],"data":[1]},"param.x":{"dtype":"int64","shape":[1],"data":[1]}}}`,
		"short data":      `{"model":"clip","inputs":{"input.0":{"dtype":"int64","shape":[2,3],"data":[1]}}}`,
		"bad dtype":       `{"model":"clip","inputs":{"input.0":{"dtype":"float128","shape":[1],"data":[1]}}}`,
		"huge shape":      `{"model":"clip","inputs":{"input.0":{"dtype":"float32","shape":[100000,100000,100000],"data":[1]}}}`,
		"unknown field":   `{"model":"clip","inputz":{}}`,
		"no input":        `{"model":"clip"}`,
		"not an integer":  `{"model":"clip","inputs":{"input.0":{"dtype":"int64","shape":[1],"data":[1.5]}}}`,
		"input gap":       `{"model":"clip","inputs":{"input.0":{"dtype":"int64","shape":[1],"data":[1]},"input.2":{"dtype":"int64","shape":[1],"data":[1]}}}`,
		"leading zero":    `{"model":"clip","inputs":{"input.0":{"dtype":"int64","shape":[1],"data":[1]},"input.01":{"dtype":"int64","shape":[1],"data":[1]}}}`,
		"unknown outputs": `{"model":"clip","outputs":"xml","inputs":{"input.0":{"dtype":"int64","shape":[1],"data":[1]}}}`,
	} {
		if code, _, b := s.do(t, "POST", "/v1/run", "application/json", strings.NewReader(body)); code != 400 {
			t.Errorf("%s: %d %s", name, code, b)
		}
	}
	if code, _, b := s.do(t, "POST", "/v1/run", "application/json", strings.NewReader(`{"model":"nope","inputs":{"input.0":{"dtype":"int64","shape":[1],"data":[1]}}}`)); code != 404 {
		t.Errorf("unknown model: %d %s", code, b)
	}
	// Oversized bodies: 413, with or without a Content-Length.
	big := `{"model":"clip","inputs":{"input.0":{"dtype":"float32","shape":[40000],"data":[` + strings.Repeat("1.5,", 39999) + `1]}}}`
	if code, _, b := s.do(t, "POST", "/v1/run", "application/json", strings.NewReader(big)); code != 413 {
		t.Errorf("oversized JSON: %d %.200s", code, b)
	}
	if code, _, b := s.do(t, "POST", "/v1/run", "application/json", struct{ *strings.Reader }{strings.NewReader(big)}); code != 413 {
		t.Errorf("oversized chunked JSON: %d %.200s", code, b)
	}
	// Nothing was half-written along the way.
	entries, _ := os.ReadDir(filepath.Join(f.store, "blobs", "sha256"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".tmp-") || e.Name() == strings.Repeat("0", 64) {
			t.Errorf("left in the store: %s", e.Name())
		}
	}
}

// TestSIGTERMUnderLoad: with requests in flight and queued, SIGTERM makes
// the daemon refuse new work, finish what runs, and exit within its
// shutdown deadline, leaving no temporary files in the store.
func TestSIGTERMUnderLoad(t *testing.T) {
	f := newDaemonFixture(t)
	s := f.serve(t, nil, "--addr", "127.0.0.1:0", "--shutdown-timeout", "10s", "--queue-size", "8")
	want := f.runDirect(t, "unet")
	type result struct {
		code int
		body []byte
	}
	// Six clients send requests back to back until the daemon stops
	// taking them.
	results := make(chan result, 1024)
	stopped := make(chan struct{})
	const clients = 6
	for range clients {
		go func() {
			defer func() { stopped <- struct{}{} }()
			for {
				ct, body := multipartRun(t, map[string]any{"model": "unet"}, f.inputs["unet"])
				req, _ := http.NewRequest("POST", s.url+"/v1/run", body)
				req.Header.Set("Content-Type", ct)
				req.Header.Set("Accept", "application/vnd.safetensors")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					if !strings.Contains(err.Error(), "connection refused") {
						results <- result{code: -1, body: []byte(err.Error())}
					}
					return
				}
				var buf bytes.Buffer
				buf.ReadFrom(resp.Body)
				resp.Body.Close()
				results <- result{resp.StatusCode, buf.Bytes()}
				if resp.StatusCode == 503 {
					return
				}
			}
		}()
	}
	// A blob upload in flight too: it must end whole or not at all.
	go func() {
		req, _ := http.NewRequest("PUT", s.url+"/v1/blobs/sha256:"+strings.Repeat("a", 64), slowReader{n: 1 << 20})
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
	}()
	time.Sleep(700 * time.Millisecond)
	start := time.Now()
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("exit: %v\n%s", err, s.stderr)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("still running 20 s after SIGTERM\n%s", s.stderr)
	}
	t.Logf("exited %.2f s after SIGTERM", time.Since(start).Seconds())
	if elapsed := time.Since(start); elapsed > 12*time.Second {
		t.Errorf("shutdown took %v, beyond its 10 s deadline", elapsed)
	}
	for range clients {
		<-stopped
	}
	close(results)
	counts := map[int]int{}
	for r := range results {
		counts[r.code]++
		switch r.code {
		case 200:
			if !bytes.Equal(tensorsOf(t, r.body)["output.0"], want["output.0"]) {
				t.Error("a request finished during shutdown with a wrong output")
			}
		case 429, 503:
			var e struct{ Error struct{ Message string } }
			json.Unmarshal(r.body, &e)
			if e.Error.Message == "" {
				t.Errorf("%d without a message: %s", r.code, r.body)
			}
		default:
			t.Errorf("request during shutdown: %d %s", r.code, r.body)
		}
	}
	t.Logf("responses: %v", counts)
	if counts[200] == 0 {
		t.Error("no in-flight request was allowed to finish")
	}
	filepath.WalkDir(f.store, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".tmp-") {
			t.Errorf("half-written file left: %s", p)
		}
		return nil
	})
	if _, err := os.Stat(filepath.Join(f.store, "blobs", "sha256", strings.Repeat("a", 64))); err == nil {
		t.Error("an interrupted upload was kept")
	}
	if !strings.Contains(s.stderr.String(), "stopped") {
		t.Errorf("no clean stop in the log:\n%s", s.stderr)
	}
}

// slowReader yields n bytes slowly, so an upload is in flight at SIGTERM.
type slowReader struct{ n int }

func (r slowReader) Read(p []byte) (int, error) {
	time.Sleep(50 * time.Millisecond)
	return copy(p[:min(len(p), 1024)], bytes.Repeat([]byte{'x'}, 1024)), nil
}
