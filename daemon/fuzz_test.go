package daemon

import (
	"bytes"
	"encoding/json"
	"fmt"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/refiners-go/refiners/core/weights"
)

// checkAnswer fails on a 5xx or a success: the fuzzed daemon has no
// model, so a request is refused (400, 404, 413, 415) or, at best, not
// found.
func checkAnswer(t *testing.T, rec *httptest.ResponseRecorder, body []byte) {
	t.Helper()
	switch rec.Code {
	case http.StatusBadRequest, http.StatusNotFound, http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType:
	default:
		t.Fatalf("%d %s for body %q", rec.Code, rec.Body, body)
	}
	var e errorBody
	if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error.Status != rec.Code || e.Error.Message == "" {
		t.Fatalf("answer %q is not a JSON error", rec.Body)
	}
}

// checkDecoded checks what the streaming decoder accepted: one valid JSON
// document, and tensors whose bytes fill their shapes.
func checkDecoded(t *testing.T, body []byte) {
	t.Helper()
	var req RunRequest
	inputs := map[string]weights.Raw{}
	if err := newJSONDecoder(bytes.NewReader(body)).runRequest(&req, inputs); err != nil {
		return
	}
	if !json.Valid(body) {
		t.Fatalf("accepted a body that is not JSON: %q", body)
	}
	for name, raw := range inputs {
		n := int64(raw.DType.Size())
		for _, d := range raw.Shape {
			n *= d
		}
		if int64(len(raw.Data)) != n {
			t.Fatalf("%s: %d bytes for %s %v", name, len(raw.Data), raw.DType, raw.Shape)
		}
	}
}

func runSeeds() [][]byte {
	seeds := []string{
		`{"model":"vit","inputs":{"input.0":{"dtype":"float32","shape":[1,2],"data":[1,2.5]}}}`,
		`{"model":"vit","inputs":{"input.0":{"data":[1,0],"shape":[2],"dtype":"bool"}},"outputs":"base64","fuse":true}`,
		`{"model":"vit","inputs":{"input.0":{"dtype":"int64","shape":[],"data_base64":"AQAAAAAAAAA="}},"adapters":[{"plugin":"lora","file":"x","scale":0.5,"params":{"a":[1,{"b":null}]}}]}`,
		`{"model":"a","model":"b"}`, `{"model":"vit"} {}`, `{"model":"vit","inputs":{"input.0":{"dtype":"float32","shape":[1],"data":[1,2]}}}`,
		`{"inputs":{"context.unet.x":{"dtype":"bfloat16","shape":[1],"data":[1e39]}}}`, `[]`, `"x"`, `{"model":"\u0076it"}`, `{`, ``,
		`{"model":"vit","inputs":{"input.0":{"dtype":"float32","shape":[-1],"data":[]}}}`,
	}
	var out [][]byte
	for _, s := range seeds {
		out = append(out, []byte(s))
	}
	return out
}

// FuzzRunRequest posts arbitrary bodies to /v1/run and /v1/jobs as JSON:
// every answer is a JSON error with a 4xx status, never a 5xx or a panic,
// and what the decoder accepts is valid JSON with consistent tensors.
func FuzzRunRequest(f *testing.F) {
	for _, s := range runSeeds() {
		f.Add(s, false)
		f.Add(s, true)
	}
	td := newTestDaemon(f, func(c *Config) { c.MaxBody = 1 << 20 })
	h := td.d.Handler()
	f.Fuzz(func(t *testing.T, body []byte, jobs bool) {
		path := "/v1/run"
		if jobs {
			path = "/v1/jobs"
		}
		req := httptest.NewRequest("POST", path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		checkAnswer(t, rec, body)
		checkDecoded(t, body)
	})
}

// FuzzRunMultipart posts multipart runs whose request part, inputs part
// and extra part are arbitrary.
func FuzzRunMultipart(f *testing.F) {
	inputs, err := os.ReadFile("../conformance/testdata/specs/vit_tiny.safetensors")
	if err != nil {
		f.Fatal(err)
	}
	for i, s := range runSeeds() {
		f.Add(s, inputs[:min(len(inputs), 4096)], "", i%2 == 0)
		f.Add(s, []byte{8, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '}, "request", i%2 == 1)
	}
	td := newTestDaemon(f, func(c *Config) { c.MaxBody = 1 << 20 })
	h := td.d.Handler()
	f.Fuzz(func(t *testing.T, request, inputs []byte, extra string, jobs bool) {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		mw.SetBoundary("fuzzboundary")
		mw.WriteField("request", string(request))
		part, _ := mw.CreateFormFile("inputs", "inputs.safetensors")
		part.Write(inputs)
		if extra != "" {
			mw.WriteField(extra, "x")
		}
		mw.Close()
		path := "/v1/run"
		if jobs {
			path = "/v1/jobs"
		}
		req := httptest.NewRequest("POST", path, bytes.NewReader(buf.Bytes()))
		req.Header.Set("Content-Type", mw.FormDataContentType())
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		checkAnswer(t, rec, []byte(fmt.Sprintf("request %q, inputs %d bytes, extra %q", request, len(inputs), extra)))
	})
}
