package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/internal/names"
	"github.com/refiners-go/refiners/store"
)

// Media types the API speaks besides JSON.
const (
	mediaSafetensors = "application/vnd.safetensors"
	mediaNDJSON      = "application/x-ndjson"
	mediaSSE         = "text/event-stream"
)

// RunRequest is the body of POST /v1/run and POST /v1/jobs.
type RunRequest struct {
	Model    string                `json:"model"`
	Inputs   map[string]JSONTensor `json:"inputs,omitempty"`
	Adapters []AdapterRequest      `json:"adapters,omitempty"`
	Fuse     bool                  `json:"fuse,omitempty"`
	// Outputs is "json" (values), "base64" (JSON with data_base64) or
	// "safetensors"; the Accept header can ask for safetensors too.
	Outputs string `json:"outputs,omitempty"`
}

// RunResponse is a finished run, as JSON.
type RunResponse struct {
	ID       string          `json:"id"`
	Model    string          `json:"model"`
	Outputs  jsonOutputs     `json:"outputs"`
	Adapters []AdapterReport `json:"adapters,omitempty"`
	Seconds  float64         `json:"seconds"`
}

// Handler is the HTTP API.
func (d *Daemon) Handler() http.Handler {
	mux := http.NewServeMux()
	route := func(pattern string, h http.HandlerFunc) {
		name := pattern[strings.Index(pattern, " ")+1:]
		mux.Handle(pattern, d.instrument(name, h))
	}
	route("GET /{$}", d.webIndex)
	route("GET /web/{file}", d.webAsset)
	route("GET /healthz", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, map[string]string{"status": "ok"}) })
	route("GET /readyz", d.readyz)
	route("GET /metrics", promhttp.HandlerFor(d.metrics.registry, promhttp.HandlerOpts{}).ServeHTTP)
	route("GET /v1/models", d.listModels)
	route("GET /v1/models/{name}", d.showModel)
	route("POST /v1/models/{name}/load", d.loadModel)
	route("POST /v1/models/{name}/unload", d.unloadModel)
	route("GET /v1/adapters", d.listAdapters)
	route("PUT /v1/blobs/{digest}", d.putBlob)
	route("GET /v1/plugins", d.listPlugins)
	route("POST /v1/run", d.run)
	route("POST /v1/jobs", d.submitJob)
	route("GET /v1/jobs", d.listJobs)
	route("GET /v1/jobs/{id}", d.jobStatus)
	route("GET /v1/jobs/{id}/result", d.jobResult)
	route("GET /v1/jobs/{id}/events", d.jobEvents)
	route("DELETE /v1/jobs/{id}", d.cancelJob)
	route("GET /v1/pipelines", d.listPipelines)
	route("POST /v1/pipelines/{name}/load", d.loadPipelineRoute)
	route("POST /v1/pipelines/{name}/unload", d.unloadPipelineRoute)
	route("POST /v1/images", d.images)
	route("POST /v1/images/jobs", d.submitImageJob)
	route("POST /v1/segment", d.segment)
	route("GET /v1/segmenters", d.listSegmenters)
	route("POST /v1/admin/drain", d.drain)
	return d.replicaHeader(d.bodyTimeout(d.authenticate(refuseDotSegments(mux))))
}

// Routing headers (docs/deploy.md). A client sends AdapterSetHeader with
// the digest of its request's model and adapter set (AdapterSetDigest) so
// that a load balancer hashing on it sends requests that share adapters to
// the same replica, where they need no adapter swap; the daemon answers
// with the digest it computed, so a client may also copy it from an
// earlier answer. Every answer names the replica in ReplicaHeader.
const (
	AdapterSetHeader = "X-Refiners-Adapter-Set"
	ReplicaHeader    = "X-Refiners-Replica"
)

// AdapterSetDigest is the routing key of a run request: sha256 of its
// model, its fuse flag and its adapters (plugin, file as written in the
// request, operation, parameters, scale), as "sha256:<hex>". Requests
// with the same key are served by the same adapter set; the converse
// need not hold (one adapter named by name and by digest gives two keys),
// which costs locality, never correctness.
func AdapterSetDigest(model string, adapters []AdapterRequest, fuse bool) string {
	type canon struct {
		Model    string           `json:"model"`
		Fuse     bool             `json:"fuse"`
		Adapters []AdapterRequest `json:"adapters"`
	}
	if adapters == nil {
		adapters = []AdapterRequest{}
	}
	b, err := json.Marshal(canon{model, fuse, adapters}) // map keys sorted: stable
	if err != nil {
		b = []byte(fmt.Sprintf("%s|%v|%v", model, fuse, adapters)) // params that JSON cannot encode are refused later
	}
	h := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(h[:])
}

func (d *Daemon) replicaHeader(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(ReplicaHeader, d.cfg.Replica)
		next.ServeHTTP(w, r)
	})
}

// drain starts draining (see Drain): for a rolling restart or a scale-down
// without SIGTERM. It answers what is left to run.
func (d *Daemon) drain(w http.ResponseWriter, r *http.Request) {
	d.Drain()
	writeJSON(w, http.StatusAccepted, d.drainStatus())
}

// bodyTimeout cuts a request body that sends nothing for BodyTimeout: the
// read deadline moves forward before each read, so a large upload that
// keeps coming is never cut, and a stalled one does not hold a connection
// and a decode slot forever.
func (d *Daemon) bodyTimeout(next http.Handler) http.Handler {
	if d.cfg.BodyTimeout <= 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &progressBody{ReadCloser: r.Body, rc: http.NewResponseController(w), timeout: d.cfg.BodyTimeout}
		}
		next.ServeHTTP(w, r)
	})
}

// progressBody extends the connection's read deadline before every read.
type progressBody struct {
	io.ReadCloser
	rc      *http.ResponseController
	timeout time.Duration
}

func (b *progressBody) Read(p []byte) (int, error) {
	b.rc.SetReadDeadline(time.Now().Add(b.timeout)) // unsupported by a test recorder: then no deadline
	n, err := b.ReadCloser.Read(p)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		err = errorf(http.StatusRequestTimeout, "request body: nothing received for %v", b.timeout)
	}
	return n, err
}

// refuseDotSegments answers 400 to paths with "." or ".." segments (also
// percent-encoded), instead of letting the router clean them into another
// route.
func refuseDotSegments(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, seg := range strings.Split(r.URL.EscapedPath(), "/") {
			if u, err := url.PathUnescape(seg); err != nil || u == "." || u == ".." || strings.Contains(u, "/") && strings.Contains(u, "..") {
				writeError(w, http.StatusBadRequest, fmt.Errorf("path %q: dot segments and escaped traversal are not allowed", r.URL.EscapedPath()))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// authenticate requires the bearer token, when one is configured, on
// everything but the health probes and the web page's files.
func (d *Daemon) authenticate(next http.Handler) http.Handler {
	if d.cfg.Token == "" {
		return next
	}
	want := []byte("Bearer " + d.cfg.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" && r.URL.Path != "/readyz" && !(r.Method == http.MethodGet && webPath(r.URL.Path)) {
			got := []byte(r.Header.Get("Authorization"))
			if subtle.ConstantTimeCompare(got, want) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="refinersd"`)
				d.metrics.requests.WithLabelValues("unauthenticated", "401").Inc()
				writeError(w, http.StatusUnauthorized, errors.New("missing or wrong bearer token"))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.code == 0 {
		s.code = 200
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusWriter) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// instrument counts, times and logs requests, and turns panics into 500s.
func (d *Daemon) instrument(route string, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				d.log.Error("handler panic", "route", route, "panic", p)
				if sw.code == 0 {
					writeError(sw, 500, fmt.Errorf("internal error"))
				}
			}
			code := sw.code
			if code == 0 {
				code = 200
			}
			d.metrics.requests.WithLabelValues(route, fmt.Sprint(code)).Inc()
			d.metrics.latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
			d.log.Debug("request", "method", r.Method, "path", r.URL.Path, "code", code, "seconds", time.Since(start).Seconds())
		}()
		h(sw, r)
	})
}

type errorBody struct {
	Error struct {
		Status  int    `json:"status"`
		Message string `json:"message"`
		// With a run refused for its memory: the estimate and the budget.
		EstimateBytes int64 `json:"estimate_bytes,omitempty"`
		BudgetBytes   int64 `json:"budget_bytes,omitempty"`
	} `json:"error"`
}

func writeError(w http.ResponseWriter, code int, err error) {
	var b errorBody
	b.Error.Status, b.Error.Message = code, err.Error()
	var adm *admissionError
	if errors.As(err, &adm) {
		b.Error.EstimateBytes, b.Error.BudgetBytes = adm.estimate, adm.budget
	}
	if code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, code, b)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func (d *Daemon) fail(w http.ResponseWriter, err error) {
	var mb *http.MaxBytesError
	if errors.As(err, &mb) {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("request body is larger than %d bytes", mb.Limit))
		return
	}
	writeError(w, statusOf(err), err)
}

func (d *Daemon) readyz(w http.ResponseWriter, r *http.Request) {
	if ok, why := d.Ready(); !ok {
		writeError(w, http.StatusServiceUnavailable, errors.New(why))
		return
	}
	writeJSON(w, 200, map[string]string{"status": "ready"})
}

// ModelInfo is a model as GET /v1/models shows it.
type ModelInfo struct {
	*store.Model
	State ModelState `json:"state"`
	Tree  string     `json:"tree,omitempty"`
	// TreeTruncated says Tree stops after maxTreeLines lines.
	TreeTruncated bool `json:"tree_truncated,omitempty"`
	// Params counts the model's parameters (elements).
	Params int64 `json:"params,omitempty"`
}

func (d *Daemon) listModels(w http.ResponseWriter, r *http.Request) {
	ms, err := d.store.Models()
	if err != nil {
		d.fail(w, err)
		return
	}
	out := []ModelInfo{}
	for _, m := range ms {
		out = append(out, ModelInfo{Model: m, State: d.modelState(m.Name)})
	}
	writeJSON(w, 200, map[string]any{"models": out})
}

// maxTreeLines bounds the tree GET /v1/models/{name} shows (the SD 1.5
// U-Net prints in about 1,200 lines); tree_depth shortens it.
const maxTreeLines = 5000

func (d *Daemon) showModel(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := names.Check("model", name); err != nil {
		d.fail(w, err)
		return
	}
	m, err := d.store.Model(name)
	if err != nil {
		d.fail(w, err)
		return
	}
	depth := -1
	if q := r.URL.Query().Get("tree_depth"); q != "" {
		if depth, err = strconv.Atoi(q); err != nil || depth < 0 {
			d.fail(w, errorf(http.StatusBadRequest, "tree_depth %q: want a non-negative integer", q))
			return
		}
	}
	info := ModelInfo{Model: m, State: d.modelState(name)}
	sp, err := d.store.LoadSpec(m)
	if err == nil {
		var c *core.Chain
		if c, err = sp.Build(m.Overrides); err == nil {
			info.Tree, info.TreeTruncated = core.TreeWith(c, core.TreeOptions{Depth: depth, MaxLines: maxTreeLines})
			info.Params = core.CountParams(c)
		}
	}
	if err != nil {
		d.fail(w, err)
		return
	}
	writeJSON(w, 200, info)
}

func (d *Daemon) loadModel(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := d.Load(r.Context(), name); err != nil {
		d.fail(w, err)
		return
	}
	writeJSON(w, 200, ModelInfo{Model: &store.Model{Name: name}, State: d.modelState(name)})
}

func (d *Daemon) unloadModel(w http.ResponseWriter, r *http.Request) {
	if err := d.Unload(r.PathValue("name")); err != nil {
		d.fail(w, err)
		return
	}
	writeJSON(w, 200, map[string]string{"status": "unloading"})
}

func (d *Daemon) listAdapters(w http.ResponseWriter, r *http.Request) {
	as, err := d.store.Adapters()
	if err != nil {
		d.fail(w, err)
		return
	}
	if as == nil {
		as = []*store.Adapter{}
	}
	writeJSON(w, 200, map[string]any{"adapters": as})
}

// putBlob stores an uploaded file under its digest; the content must
// match it, and nothing is kept otherwise.
func (d *Daemon) putBlob(w http.ResponseWriter, r *http.Request) {
	digest := r.PathValue("digest")
	if err := store.CheckDigest(digest); err != nil {
		d.fail(w, err)
		return
	}
	if r.ContentLength > d.cfg.MaxUpload {
		d.fail(w, &http.MaxBytesError{Limit: d.cfg.MaxUpload})
		return
	}
	b, err := d.store.PutBlob(http.MaxBytesReader(w, r.Body, d.cfg.MaxUpload), digest, 0)
	if err != nil {
		d.fail(w, err)
		return
	}
	writeJSON(w, 201, b)
}

func (d *Daemon) listPlugins(w http.ResponseWriter, r *http.Request) {
	es, err := d.host.List()
	if err != nil {
		d.fail(w, err)
		return
	}
	restarts := d.host.Restarts()
	type plugin struct {
		Name     string `json:"name"`
		Version  string `json:"version"`
		SHA256   string `json:"sha256"`
		PID      int    `json:"pid,omitempty"`
		Restarts int    `json:"restarts"`
		Status   string `json:"status"` // "ok", or why the plugin will not start
	}
	out := []plugin{}
	for _, e := range es {
		status := "ok"
		if err := d.host.Verify(e); err != nil {
			status = "refused: " + err.Error()
		}
		out = append(out, plugin{Name: e.Name, Version: e.Version, SHA256: e.SHA256, PID: d.host.PID(e.Name), Restarts: restarts[e.Name], Status: status})
	}
	writeJSON(w, 200, map[string]any{"plugins": out})
}

// parseRun reads a run request: JSON, or multipart/form-data with a
// "request" JSON part and an "inputs" safetensors part (the file format of
// `refinersd run --input`). At most MaxDecodes requests are read at once;
// the others wait for their turn before their body is read.
func (d *Daemon) parseRun(w http.ResponseWriter, r *http.Request) (*Job, string, error) {
	if r.ContentLength > d.cfg.MaxBody {
		return nil, "", &http.MaxBytesError{Limit: d.cfg.MaxBody}
	}
	select {
	case d.decodes <- struct{}{}:
	case <-r.Context().Done():
		return nil, "", errorf(http.StatusServiceUnavailable, "request canceled while waiting to be read: %v", r.Context().Err())
	}
	defer func() { <-d.decodes }()
	d.metrics.decoding.Inc()
	defer d.metrics.decoding.Dec()
	r.Body = http.MaxBytesReader(w, r.Body, d.cfg.MaxBody)
	var req RunRequest
	inputs := map[string]weights.Raw{}
	mt, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch mt {
	case "application/json", "":
		if err := newJSONDecoder(r.Body).runRequest(&req, inputs); err != nil {
			return nil, "", badBody(err)
		}
	case "multipart/form-data":
		mr := multipart.NewReader(r.Body, params["boundary"])
		seen := map[string]bool{}
		for {
			part, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, "", badBody(err)
			}
			if seen[part.FormName()] {
				return nil, "", errorf(http.StatusBadRequest, "multipart part %q is given twice", part.FormName())
			}
			seen[part.FormName()] = true
			switch part.FormName() {
			case "request":
				if err := newJSONDecoder(part).runRequest(&req, inputs); err != nil {
					return nil, "", badBody(err)
				}
			case "inputs":
				data, err := io.ReadAll(part)
				if err != nil {
					return nil, "", badBody(err)
				}
				f, err := weights.Parse("inputs", data)
				if err != nil {
					return nil, "", errorf(http.StatusBadRequest, "%v", err)
				}
				for _, k := range f.Keys() {
					if _, dup := inputs[k]; dup {
						return nil, "", errorf(http.StatusBadRequest, "input %s is given twice", k)
					}
					info, _ := f.Info(k)
					raw, err := f.Bytes(k)
					if err != nil {
						return nil, "", errorf(http.StatusBadRequest, "%v", err)
					}
					inputs[k] = weights.Raw{DType: info.DType, Shape: info.Shape, Data: raw}
				}
				if u := f.Unsupported(); len(u) > 0 {
					return nil, "", errorf(http.StatusBadRequest, "inputs: unsupported dtypes: %v", u)
				}
			default:
				return nil, "", errorf(http.StatusBadRequest, "multipart part %q: want \"request\" and \"inputs\"", part.FormName())
			}
		}
	default:
		return nil, "", errorf(http.StatusUnsupportedMediaType, "Content-Type %q: send application/json or multipart/form-data", mt)
	}
	for name := range inputs {
		if !tensorNameRE.MatchString(name) {
			return nil, "", errorf(http.StatusBadRequest, "input name %q: want input.N or context.<name>.<key>", name)
		}
	}
	if _, ok := inputs["input.0"]; !ok {
		return nil, "", errorf(http.StatusBadRequest, "no input.0 tensor")
	}
	for name := range inputs {
		if n, ok := strings.CutPrefix(name, "input."); ok {
			i, _ := strconv.Atoi(n)
			if _, prev := inputs[fmt.Sprintf("input.%d", i-1)]; i > 0 && !prev || n != strconv.Itoa(i) {
				return nil, "", errorf(http.StatusBadRequest, "input %s: inputs are numbered input.0, input.1, ... without gaps or leading zeros", name)
			}
		}
	}
	if req.Model == "" {
		return nil, "", errorf(http.StatusBadRequest, "model: missing")
	}
	if err := names.Check("model", req.Model); err != nil {
		return nil, "", fmt.Errorf("model: %w", err)
	}
	out := req.Outputs
	if out == "" {
		out = "json"
		if accepts(r, mediaSafetensors) {
			out = "safetensors"
		}
	}
	if out != "json" && out != "base64" && out != "safetensors" {
		return nil, "", errorf(http.StatusBadRequest, "outputs %q: want json, base64 or safetensors", out)
	}
	j := newJob(context.Background())
	j.Model, j.Adapters, j.Fuse, j.inputs = req.Model, req.Adapters, req.Fuse, inputs
	return j, out, nil
}

func badBody(err error) error {
	var mb *http.MaxBytesError
	var ae *apiError
	if errors.As(err, &mb) || errors.As(err, &ae) {
		return err
	}
	return errorf(http.StatusBadRequest, "request body: %v", err)
}

func accepts(r *http.Request, media string) bool {
	for _, a := range strings.Split(r.Header.Get("Accept"), ",") {
		if mt, _, _ := mime.ParseMediaType(strings.TrimSpace(a)); mt == media {
			return true
		}
	}
	return false
}

// run runs a job and answers with its result; with Accept:
// application/x-ndjson or text/event-stream it streams the job's events
// first. A client that goes away cancels its job.
func (d *Daemon) run(w http.ResponseWriter, r *http.Request) {
	j, out, ok := d.accept(w, r)
	if !ok {
		return
	}
	defer d.jobs.remove(j.ID)
	if d.awaitJob(w, r, j) {
		d.writeResult(w, j, out)
	}
}

// awaitJob waits for a job a synchronous request submitted: it streams
// the job's events instead when the client accepts application/x-ndjson
// or text/event-stream, and cancels the job when the client goes away. It
// reports whether the caller is still to answer with the result.
func (d *Daemon) awaitJob(w http.ResponseWriter, r *http.Request, j *Job) bool {
	if accepts(r, mediaNDJSON) || accepts(r, mediaSSE) {
		d.stream(w, r, j, true)
		return false
	}
	if !j.wait(r.Context()) {
		d.Cancel(j)
		return false
	}
	return true
}

// accept parses and queues a run request, answering the error if any.
func (d *Daemon) accept(w http.ResponseWriter, r *http.Request) (*Job, string, bool) {
	j, out, err := d.parseRun(w, r)
	if err == nil {
		w.Header().Set(AdapterSetHeader, AdapterSetDigest(j.Model, j.Adapters, j.Fuse))
		err = d.Submit(j)
	}
	if err != nil {
		d.fail(w, err)
		return nil, "", false
	}
	return j, out, true
}

func (d *Daemon) submitJob(w http.ResponseWriter, r *http.Request) {
	j, _, ok := d.accept(w, r)
	if !ok {
		return
	}
	writeAccepted(w, j)
}

// writeAccepted answers an asynchronous submission: 202 with the job's
// status, and its URL in Location.
func writeAccepted(w http.ResponseWriter, j *Job) {
	w.Header().Set("Location", "/v1/jobs/"+j.ID)
	writeJSON(w, http.StatusAccepted, j.status())
}

func (d *Daemon) listJobs(w http.ResponseWriter, r *http.Request) {
	out := []JobStatus{}
	for _, j := range d.jobs.list() {
		out = append(out, j.status())
	}
	writeJSON(w, 200, map[string]any{"jobs": out})
}

func (d *Daemon) job(w http.ResponseWriter, r *http.Request) (*Job, bool) {
	id := r.PathValue("id")
	if !jobIDRE.MatchString(id) {
		writeError(w, http.StatusBadRequest, fmt.Errorf("job id %q: want 24 lower-case hex digits", id))
		return nil, false
	}
	j, ok := d.jobs.get(id)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Errorf("job %s: not found (finished jobs are kept %v)", id, d.cfg.JobTTL))
		return nil, false
	}
	return j, true
}

func (d *Daemon) jobStatus(w http.ResponseWriter, r *http.Request) {
	if j, ok := d.job(w, r); ok {
		writeJSON(w, 200, j.status())
	}
}

func (d *Daemon) jobResult(w http.ResponseWriter, r *http.Request) {
	j, ok := d.job(w, r)
	if !ok {
		return
	}
	if !j.terminal() {
		writeError(w, http.StatusConflict, fmt.Errorf("job %s is %s", j.ID, j.status().State))
		return
	}
	out := r.URL.Query().Get("outputs")
	if out == "" {
		out = "json"
		if accepts(r, mediaSafetensors) {
			out = "safetensors"
		}
	}
	if j.image != nil {
		d.writeImageResult(w, r, j)
		return
	}
	d.writeResult(w, j, out)
}

func (d *Daemon) jobEvents(w http.ResponseWriter, r *http.Request) {
	if j, ok := d.job(w, r); ok {
		d.stream(w, r, j, false)
	}
}

func (d *Daemon) cancelJob(w http.ResponseWriter, r *http.Request) {
	j, ok := d.job(w, r)
	if !ok {
		return
	}
	if j.terminal() {
		d.jobs.remove(j.ID)
		writeJSON(w, 200, j.status())
		return
	}
	d.Cancel(j)
	writeJSON(w, http.StatusAccepted, j.status())
}

// writeResult answers with a finished job's outputs or its error.
func (d *Daemon) writeResult(w http.ResponseWriter, j *Job, out string) {
	j.mu.Lock()
	outputs, reports, jerr, code := j.outputs, j.reports, j.err, j.code
	secs := j.finished.Sub(j.started).Seconds()
	if j.started.IsZero() {
		secs = 0
	}
	j.mu.Unlock()
	if jerr != nil {
		if code == 499 {
			code = http.StatusConflict
		}
		writeError(w, code, fmt.Errorf("job %s: %w", j.ID, jerr))
		return
	}
	if out == "safetensors" {
		meta := map[string]string{"job": j.ID, "model": j.Model}
		if len(reports) > 0 {
			b, _ := json.Marshal(reports)
			meta["adapters"] = string(b)
		}
		var buf bytes.Buffer
		if err := weights.Encode(&buf, outputs, meta); err != nil {
			writeError(w, 500, err)
			return
		}
		w.Header().Set("Content-Type", mediaSafetensors)
		w.Header().Set("Content-Length", fmt.Sprint(buf.Len()))
		w.WriteHeader(200)
		w.Write(buf.Bytes())
		return
	}
	resp := RunResponse{ID: j.ID, Model: j.Model, Outputs: jsonOutputs{}, Adapters: reports, Seconds: secs}
	for k, raw := range outputs {
		resp.Outputs[k] = encodeTensor(raw, out == "base64")
	}
	b, err := json.Marshal(resp)
	if err != nil {
		writeError(w, http.StatusNotAcceptable, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(200)
	w.Write(append(b, '\n'))
}

// stream writes a job's events as NDJSON (default) or SSE until it ends;
// withResult adds a final "result" event carrying the outputs as JSON.
func (d *Daemon) stream(w http.ResponseWriter, r *http.Request, j *Job, withResult bool) {
	sse := accepts(r, mediaSSE)
	if sse {
		w.Header().Set("Content-Type", mediaSSE)
		w.Header().Set("Cache-Control", "no-cache")
	} else {
		w.Header().Set("Content-Type", mediaNDJSON)
	}
	w.WriteHeader(200)
	flusher, _ := w.(http.Flusher)
	write := func(kind string, v any) {
		b, _ := json.Marshal(v)
		if sse {
			fmt.Fprintf(w, "event: %s\ndata: %s\n\n", kind, b)
		} else {
			w.Write(append(b, '\n'))
		}
		if flusher != nil {
			flusher.Flush()
		}
	}
	seq := 0
	for {
		events, changed, ended := j.eventsFrom(seq)
		for _, e := range events {
			write(e.Type, e)
		}
		seq += len(events)
		if ended {
			break
		}
		select {
		case <-changed:
		case <-r.Context().Done():
			if withResult {
				d.Cancel(j)
			}
			return
		}
	}
	if withResult && j.image != nil {
		if resp := j.imageResponse(); resp != nil {
			write("result", map[string]any{"type": "result", "result": resp})
		}
		return
	}
	if withResult {
		j.mu.Lock()
		outputs, reports := j.outputs, j.reports
		j.mu.Unlock()
		if outputs != nil {
			resp := RunResponse{ID: j.ID, Model: j.Model, Outputs: jsonOutputs{}, Adapters: reports}
			for k, raw := range outputs {
				resp.Outputs[k] = encodeTensor(raw, true)
			}
			write("result", map[string]any{"type": "result", "result": resp})
		}
	}
}

// Serve runs the API on l until ctx is canceled, then shuts down
// gracefully: readiness fails, queued jobs are refused, running ones get
// until ShutdownTimeout to finish (then are canceled), the listener
// closes, models are released and plugins stopped.
func (d *Daemon) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{Handler: d.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: d.cfg.IdleTimeout}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	d.log.Info("listening", "addr", l.Addr().String(), "auth", d.cfg.Token != "")
	select {
	case err := <-errc:
		d.Close()
		return err
	case <-ctx.Done():
	}
	d.log.Info("shutting down", "deadline", d.cfg.ShutdownTimeout)
	d.Drain()
	sctx, cancel := context.WithTimeout(context.Background(), d.cfg.ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if err != nil {
		d.log.Warn("deadline reached; canceling running jobs", "error", err)
		d.CancelRunning()
		srv.Close()
	}
	// Jobs submitted asynchronously have no handler waiting for them.
	for _, j := range d.jobs.list() {
		if !j.wait(sctx) {
			d.log.Warn("deadline reached; canceling running jobs")
			d.CancelRunning()
			break
		}
	}
	d.Close()
	d.log.Info("stopped")
	return nil
}
