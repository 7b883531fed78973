package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/refiners-go/refiners/core/weights"
)

// deepSpec is a legal spec whose tree is depth levels deep (a block
// recursing with a decreasing parameter).
const deepSpec = `refiners: 1
params: {depth: 10}
blocks:
  R:
    params: {n: 1}
    layers: [Identity, {R: {n: "${n-1}", repeat: "${n > 0}"}}]
layers: [{R: {n: "${depth}"}}]
`

func TestModelViewIsBounded(t *testing.T) {
	td := newTestDaemon(t, nil)
	td.addModel(t, "deep", deepSpec, "", map[string]string{"depth": "3000"})
	code, body := td.do(t, "GET", "/v1/models/deep", "", nil)
	if code != 200 {
		t.Fatalf("GET: %d %s", code, body)
	}
	if len(body) > 2<<20 {
		t.Fatalf("the model view of a 3000-deep model is %d bytes", len(body))
	}
	var info struct {
		Tree          string `json:"tree"`
		TreeTruncated bool   `json:"tree_truncated"`
	}
	if err := json.Unmarshal(body, &info); err != nil {
		t.Fatal(err)
	}
	if !info.TreeTruncated || strings.Count(info.Tree, "\n") != maxTreeLines || !strings.HasSuffix(info.Tree, "more lines)") {
		t.Errorf("tree_truncated=%v with %d lines", info.TreeTruncated, strings.Count(info.Tree, "\n"))
	}
	for q, want := range map[string]int{"?tree_depth=2": 200, "?tree_depth=-1": 400, "?tree_depth=x": 400} {
		code, body := td.do(t, "GET", "/v1/models/deep"+q, "", nil)
		if code != want {
			t.Errorf("GET %s: %d, want %d: %s", q, code, want, body)
		}
		info.TreeTruncated = false
		if want == 200 && json.Unmarshal(body, &info) == nil && (info.TreeTruncated || strings.Count(info.Tree, "\n") > 5) {
			t.Errorf("GET %s: tree of %d lines:\n%s", q, strings.Count(info.Tree, "\n"), info.Tree)
		}
	}
}

// countingReader counts the bytes read from it.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func TestTensorDataLongerThanItsShapeIsRefusedAtOnce(t *testing.T) {
	td := newTestDaemon(t, nil)
	body := `{"model":"m","inputs":{"input.0":{"dtype":"float32","shape":[2],"data":[0` + strings.Repeat(",0", 5<<20) + `]}}}`
	r := &countingReader{r: strings.NewReader(body)}
	req := httptest.NewRequest("POST", "/v1/run", r)
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	td.d.Handler().ServeHTTP(rec, req)
	if rec.Code != 400 || !strings.Contains(rec.Body.String(), "more than 2 values") {
		t.Errorf("%d %s", rec.Code, rec.Body)
	}
	if r.n.Load() > 64<<10 {
		t.Errorf("read %d of the body's %d bytes before refusing it", r.n.Load(), len(body))
	}
}

// gatedReader is a request body whose first read waits for the gate to
// open; active counts the reads in progress, across bodies.
type gatedReader struct {
	r               io.Reader
	started         bool
	active, maxSeen *atomic.Int64
	gate            chan struct{}
}

func (g *gatedReader) Read(p []byte) (int, error) {
	n := g.active.Add(1)
	defer g.active.Add(-1)
	for m := g.maxSeen.Load(); n > m && !g.maxSeen.CompareAndSwap(m, n); m = g.maxSeen.Load() {
	}
	if !g.started {
		g.started = true
		<-g.gate
	}
	return g.r.Read(p)
}

func TestConcurrentDecodesAreLimited(t *testing.T) {
	td := newTestDaemon(t, func(c *Config) { c.MaxDecodes = 1 })
	var active, maxSeen atomic.Int64
	gate := make(chan struct{})
	var wg sync.WaitGroup
	codes := make(chan int, 3)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := &gatedReader{r: strings.NewReader(`{"model":"nope","inputs":{"input.0":{"dtype":"float32","shape":[1],"data":[1]}}}`),
				active: &active, maxSeen: &maxSeen, gate: gate}
			req := httptest.NewRequest("POST", "/v1/run", body)
			rec := httptest.NewRecorder()
			td.d.Handler().ServeHTTP(rec, req)
			codes <- rec.Code
		}()
	}
	// Give every request the time to start reading its body, were it let.
	time.Sleep(300 * time.Millisecond)
	close(gate)
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != 404 { // parsed, then the model is unknown
			t.Errorf("answer %d, want 404", c)
		}
	}
	if maxSeen.Load() != 1 {
		t.Errorf("%d bodies were read at once; max_decodes is 1", maxSeen.Load())
	}
}

func TestJSONTensorsDecodeInAnyFieldOrder(t *testing.T) {
	want, err := decodeTensor("input.0", &JSONTensor{DType: "int64", Shape: []int64{2, 2}, Data: []float64{1, -2, 3, 1 << 52}})
	if err != nil {
		t.Fatal(err)
	}
	for _, src := range []string{
		`{"dtype":"int64","shape":[2,2],"data":[1,-2,3,4503599627370496]}`,
		`{"data":[1,-2,3,4503599627370496],"shape":[2,2],"dtype":"int64"}`,
		`{"shape":[2,2],"data":[1,-2.0,3,4503599627370496],"dtype":"int64"}`,
		`{"dtype":"int64","data":[1,-2,3,4503599627370496],"shape":[2,2],"data_base64":""}`,
	} {
		inputs := map[string]weights.Raw{}
		var req RunRequest
		err := newJSONDecoder(strings.NewReader(`{"inputs":{"input.0":`+src+`}}`)).runRequest(&req, inputs)
		got := inputs["input.0"]
		if err != nil || got.DType != want.DType || !slices.Equal(got.Shape, want.Shape) || !bytes.Equal(got.Data, want.Data) {
			t.Errorf("%s: %v %+v", src, err, got)
		}
	}
	for src, msg := range map[string]string{
		`{"dtype":"float32","shape":[2],"data":[1]}`:                          "1 values for shape [2]",
		`{"data":[1,2,3],"dtype":"float32","shape":[2]}`:                      "3 values for shape [2]",
		`{"dtype":"float32","shape":[1],"data":[1e39]}`:                       "out of the range of float32",
		`{"dtype":"float32","shape":[1],"data":["1"]}`:                        "not a number",
		`{"dtype":"float32","shape":[1],"data":[1],"extra":1}`:                `unknown field "extra"`,
		`{"dtype":"float32","data":[1]}`:                                      "no shape",
		`{"shape":[1],"data":[1]}`:                                            "dtype",
		`{"dtype":"float32","shape":[-1],"data":[]}`:                          "bad dimension",
		`{"dtype":"float32","shape":[1],"data":[1],"data_base64":"AAAAAA=="}`: "not both",
	} {
		var req RunRequest
		err := newJSONDecoder(strings.NewReader(`{"inputs":{"input.0":`+src+`}}`)).runRequest(&req, map[string]weights.Raw{})
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: error %v, want %q", src, err, msg)
		}
	}
}

// BenchmarkDecodeRunRequest decodes a request of 4M float32 values and
// reports the bytes allocated per byte of body: 4.0 (the old decoder, into
// a []float64 and then bytes, allocated 30, and took 2.2 times as long).
func BenchmarkDecodeRunRequest(b *testing.B) {
	body := `{"model":"m","inputs":{"input.0":{"dtype":"float32","shape":[4194304],"data":[0` + strings.Repeat(",0", 4<<20-1) + `]}}}`
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	for b.Loop() {
		var req RunRequest
		if err := newJSONDecoder(strings.NewReader(body)).runRequest(&req, map[string]weights.Raw{}); err != nil {
			b.Fatal(err)
		}
	}
	runtime.ReadMemStats(&ms1)
	b.ReportMetric(float64(ms1.TotalAlloc-ms0.TotalAlloc)/float64(b.N)/float64(len(body)), "alloc-bytes/body-byte")
}

func TestAmbiguousRequestBodiesAreRefused(t *testing.T) {
	td := newTestDaemon(t, nil)
	const input = `"inputs":{"input.0":{"dtype":"float32","shape":[1],"data":[1]}}`
	valid := `{"model":"nope",` + input + `}`
	multipartBody := func(parts ...[2]string) (string, *bytes.Buffer) {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		for _, p := range parts {
			mw.WriteField(p[0], p[1])
		}
		mw.Close()
		return mw.FormDataContentType(), &buf
	}
	for _, c := range []struct {
		name, contentType string
		body              io.Reader
		want              int
		msg               string
	}{
		{"one object", "application/json", strings.NewReader(valid + " \n"), 404, "nope"},
		{"trailing garbage", "application/json", strings.NewReader(valid + " garbage"), 400, "after the request object"},
		{"two objects", "application/json", strings.NewReader(valid + valid), 400, "after the request object"},
		{"duplicate key", "application/json", strings.NewReader(`{"model":"a","model":"nope",` + input + `}`), 400, "is given twice"},
		{"duplicate tensor key", "application/json", strings.NewReader(`{"model":"nope","inputs":{"input.0":{"dtype":"float32","dtype":"int64","shape":[1],"data":[1]}}}`), 400, "given twice"},
		{"duplicate input", "application/json", strings.NewReader(`{"model":"nope",` + input + `,` + input + `}`), 400, "given twice"},
		{"duplicate adapter param", "application/json", strings.NewReader(`{"model":"nope",` + input + `,"adapters":[{"plugin":"p","file":"f","params":{"a":1,"a":2}}]}`), 400, "given twice"},
		{"duplicate escaped key", "application/json", strings.NewReader(`{"model":"nope",` + input + `,"adapters":[{"plugin":"p","file":"f","params":{"a":1,"\u0061":2}}]}`), 400, "given twice"},
	} {
		code, body := td.do(t, "POST", "/v1/run", c.contentType, c.body)
		if code != c.want || !strings.Contains(string(body), c.msg) {
			t.Errorf("%s: %d %s, want %d %q", c.name, code, body, c.want, c.msg)
		}
	}
	ct, body := multipartBody([2]string{"request", `{"model":"nope",` + input + `}`}, [2]string{"request", `{"model":"other"}`})
	if code, b := td.do(t, "POST", "/v1/run", ct, body); code != 400 || !strings.Contains(string(b), "is given twice") {
		t.Errorf("two request parts: %d %s", code, b)
	}
	ct, body = multipartBody([2]string{"request", valid + ` {}`})
	if code, b := td.do(t, "POST", "/v1/run", ct, body); code != 400 || !strings.Contains(string(b), "after the request object") {
		t.Errorf("request part with two objects: %d %s", code, b)
	}
}

// serveForTest runs Serve on a loopback port until the test ends.
func serveForTest(t *testing.T, configure func(*Config)) string {
	t.Helper()
	dir := t.TempDir()
	cfg := Defaults()
	cfg.Store, cfg.PluginsDir = filepath.Join(dir, "store"), filepath.Join(dir, "plugins")
	configure(&cfg)
	d, err := New(cfg, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return l.Addr().String()
}

// closedWithin reports whether the server closes conn (or answers, then
// closes) within d.
func closedWithin(conn net.Conn, d time.Duration) (bool, string) {
	conn.SetReadDeadline(time.Now().Add(d))
	b, err := io.ReadAll(conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false, string(b)
	}
	return true, string(b)
}

func TestIdleAndStalledConnectionsAreClosed(t *testing.T) {
	addr := serveForTest(t, func(c *Config) { c.IdleTimeout, c.BodyTimeout = 300*time.Millisecond, 300*time.Millisecond })

	// An idle keep-alive connection, after one request.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("idle keep-alive connection: read %v, want the server to close it", err)
	}

	// A body that stops coming.
	conn2, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	io.WriteString(conn2, "POST /v1/run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":")
	closed, answer := closedWithin(conn2, 5*time.Second)
	if !closed || !strings.Contains(answer, "408") {
		t.Errorf("stalled body: closed=%v, answer %q; want a 408", closed, answer)
	}
}

// TestRunsOverTheMemoryBudgetAreRefused: a run whose estimated activation
// memory is over max_activation gets 422 with the estimate, before it
// allocates; one under it runs.
func TestRunsOverTheMemoryBudgetAreRefused(t *testing.T) {
	td := newTestDaemon(t, func(c *Config) { c.MaxActivation = 1 << 20 })
	td.addModel(t, "attn", "refiners: 1\nlayers:\n  - ScaledDotProductAttention: {num_heads: 1}\n", "", nil)
	request := func(tokens int) string {
		qkv := fmt.Sprintf(`{"dtype":"float32","shape":[1,%d,8],"data_base64":"%s"}`, tokens, base64.StdEncoding.EncodeToString(make([]byte, tokens*8*4)))
		mask := fmt.Sprintf(`{"dtype":"bool","shape":[%d,%d],"data_base64":"%s"}`, tokens, tokens, base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, tokens*tokens)))
		return `{"model":"attn","outputs":"base64","inputs":{"input.0":` + qkv + `,"input.1":` + qkv + `,"input.2":` + qkv + `,"input.3":` + mask + `}}`
	}
	if code, body := td.post(t, "/v1/run", request(16)); code != 200 {
		t.Fatalf("16 tokens: %d %s", code, body)
	}
	// 1000 tokens: the [1000, 1000] score matrix alone is 4 MB.
	code, body := td.post(t, "/v1/run", request(1000))
	var e errorBody
	json.Unmarshal(body, &e)
	if code != 422 || e.Error.BudgetBytes != 1<<20 || e.Error.EstimateBytes < 4e6 || !strings.Contains(e.Error.Message, "max_activation") {
		t.Errorf("1000 tokens: %d %s", code, body)
	}
}
