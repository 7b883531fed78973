package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/refiners-go/refiners/adapt"
	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/hosts"
	"github.com/refiners-go/refiners/internal/names"
	_ "github.com/refiners-go/refiners/models/all" // the layers of every model the specs may use
	"github.com/refiners-go/refiners/sdk"
	"github.com/refiners-go/refiners/store"
)

// Daemon runs jobs on warm models. It is safe for concurrent use.
type Daemon struct {
	cfg     Config
	store   *store.Store
	host    *hosts.Host
	log     hclog.Logger
	metrics *metrics
	jobs    *jobTable
	decodes chan struct{} // a slot per request body being read
	segs    *segmenters   // Segment Anything models (segment.go)

	mu       sync.Mutex
	models   map[string]*warm
	queued   int // jobs waiting, across models
	draining bool
	workers  sync.WaitGroup
	stop     chan struct{}
}

// warm is a model kept in memory, with its own worker: jobs on one model
// run one at a time, since adapters change its tree.
type warm struct {
	name     string
	manifest *store.Model
	ready    chan struct{} // closed when loading ends
	loadErr  error
	chain    *core.Chain
	file     *weights.File
	pipe     *warmPipeline // an SD 1.5 pipeline instead of a store model (chain, file and manifest unset)

	// guarded by Daemon.mu
	pending  []*Job
	busy     bool
	lastUsed time.Time
	wake     chan struct{}
	quit     chan struct{}
	applied  *appliedSet
	streak   int

	// estimates caches activation estimates by adapter set and input
	// shapes (-1: the dry run failed); the worker alone uses it.
	estimates map[string]int64
}

// appliedSet is the adapter set currently on a warm model.
type appliedSet struct {
	key     string
	undo    []func() error
	reports []AdapterReport
}

// resolvedAdapter is an adapter request checked against the store and the
// plugins: its file's digest and path, and its parameters as JSON.
type resolvedAdapter struct {
	req    AdapterRequest
	digest string
	path   string
	params string
}

// New opens the store and the plugins directory.
func New(cfg Config, log hclog.Logger) (*Daemon, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	st, err := store.OpenWith(cfg.Store, store.Options{CacheDir: cfg.CacheDir, CacheBytes: cfg.CacheMaxBytes})
	if err != nil {
		return nil, err
	}
	h, err := hosts.New(cfg.PluginsDir, hosts.Options{Logger: log, CallTimeout: cfg.PluginTimeout})
	if err != nil {
		return nil, err
	}
	d := &Daemon{cfg: cfg, store: st, host: h, log: log, jobs: newJobTable(cfg.JobTTL, cfg.MaxJobs),
		models: map[string]*warm{}, stop: make(chan struct{}), decodes: make(chan struct{}, cfg.MaxDecodes), segs: newSegmenters(cfg)}
	if d.cfg.Replica == "" {
		d.cfg.Replica, _ = os.Hostname()
	}
	d.metrics = newMetrics(d)
	go d.reaper()
	for _, name := range cfg.Preload {
		go d.preload(name, d.Load)
	}
	for _, name := range d.pipelineNames() {
		if cfg.Pipelines[name].Preload {
			go d.preload(name, d.LoadPipeline)
		}
	}
	return d, nil
}

// preloadRetry is how long a failed preload waits before trying again
// (the model may not be in the store yet, or the store not reachable).
var preloadRetry = 5 * time.Second

// preload loads a model named in Preload (or a pipeline with preload),
// trying again until it loads or the daemon stops.
func (d *Daemon) preload(name string, load func(context.Context, string) error) {
	for {
		err := load(context.Background(), name)
		if err == nil {
			return
		}
		d.log.Error("preload failed; /readyz fails until it succeeds", "model", name, "error", err, "retry_in", preloadRetry)
		select {
		case <-d.stop:
			return
		case <-time.After(preloadRetry):
		}
		if d.Draining() {
			return
		}
	}
}

// Ready reports whether the daemon takes work: not draining, and every
// model of Preload and every pipeline with preload set warm (both are kept
// regardless of keep_alive, and a failed load is retried). It says why
// not.
func (d *Daemon) Ready() (bool, string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.draining {
		return false, "draining: finishing the jobs it has, taking no new ones"
	}
	preloaded := slices.Clone(d.cfg.Preload)
	for name, p := range d.cfg.Pipelines {
		if p.Preload {
			preloaded = append(preloaded, pipelineKey(name))
		}
	}
	for _, name := range preloaded {
		w, ok := d.models[name]
		if !ok {
			return false, fmt.Sprintf("model %s is not loaded", name)
		}
		select {
		case <-w.ready:
			if w.loadErr != nil {
				return false, w.loadErr.Error()
			}
		default:
			return false, fmt.Sprintf("model %s is loading", name)
		}
	}
	return true, ""
}

// apiError is an error with the HTTP status it maps to.
type apiError struct {
	code int
	err  error
}

func (e *apiError) Error() string { return e.err.Error() }
func (e *apiError) Unwrap() error { return e.err }

func errorf(code int, format string, args ...any) error {
	return &apiError{code: code, err: fmt.Errorf(format, args...)}
}

// statusOf maps an error to an HTTP status.
func statusOf(err error) int {
	var ae *apiError
	var adm *admissionError
	switch {
	case errors.As(err, &adm):
		return http.StatusUnprocessableEntity
	case errors.As(err, &ae):
		return ae.code
	case errors.Is(err, store.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, store.ErrNotFound):
		return http.StatusNotFound
	}
	return http.StatusInternalServerError
}

// resolve checks a job's adapters: plugin names, files (adapter names or
// digests, which never leave the store), parameters; and computes the key
// that groups jobs sharing the same adapter set.
func (d *Daemon) resolve(j *Job) error {
	installed, err := d.host.List()
	if err != nil {
		return err
	}
	var keyParts []string
	for i, a := range j.Adapters {
		field := fmt.Sprintf("adapters[%d]", i)
		if err := checkPlugin(field, a.Plugin, installed); err != nil {
			return err
		}
		if a.Operation != "" {
			if err := names.Check("operation", a.Operation); err != nil {
				return errorf(http.StatusBadRequest, "adapters[%d].operation: %v", i, err)
			}
		}
		digest, path, err := d.storeFile(field+".file", a.File)
		if err != nil {
			return err
		}
		params := map[string]any{}
		for k, v := range a.Params {
			params[k] = v
		}
		if a.Scale != nil {
			params["scale"] = *a.Scale
		}
		pj, err := json.Marshal(params) // map keys sorted: a stable key
		if err != nil {
			return errorf(http.StatusBadRequest, "adapters[%d].params: %v", i, err)
		}
		j.resolved = append(j.resolved, resolvedAdapter{req: a, digest: digest, path: path, params: string(pj)})
		keyParts = append(keyParts, a.Plugin+"|"+a.Operation+"|"+digest+"|"+string(pj))
	}
	j.key = strings.Join(keyParts, "\n")
	if j.Fuse {
		j.key = "fuse\n" + j.key
	}
	if j.image != nil {
		return d.resolveControls(j, installed)
	}
	return nil
}

// checkPlugin checks a request's plugin name (field.plugin): valid and
// installed.
func checkPlugin(field, name string, installed []hosts.Entry) error {
	if err := names.Check("plugin", name); err != nil {
		return errorf(http.StatusBadRequest, "%s.plugin: %v", field, err)
	}
	if !slices.ContainsFunc(installed, func(e hosts.Entry) bool { return e.Name == name }) {
		return errorf(http.StatusBadRequest, "%s.plugin %q is not installed", field, name)
	}
	return nil
}

// storeFile resolves a request's file (an adapter name or a blob digest,
// which never leave the store) to its digest and path.
func (d *Daemon) storeFile(field, file string) (digest, path string, err error) {
	if strings.HasPrefix(file, "sha256:") {
		if err := store.CheckDigest(file); err != nil {
			return "", "", errorf(http.StatusBadRequest, "%s: %w", field, err)
		}
		digest = file
	} else {
		if err := names.Check("adapter", file); err != nil {
			return "", "", errorf(http.StatusBadRequest, "%s (an adapter name or a sha256: digest): %w", field, err)
		}
		ad, err := d.store.Adapter(file)
		if err != nil {
			return "", "", fmt.Errorf("%s: %w", field, err)
		}
		digest = ad.File.Digest
	}
	path, err = d.store.BlobPath(digest)
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", field, err)
	}
	return digest, path, nil
}

// Submit queues a job. It fails at once (429) when the queue is full and
// (503) when the daemon is shutting down.
func (d *Daemon) Submit(j *Job) error {
	var m *store.Model
	var p PipelineConfig
	var err error
	if j.image != nil {
		p, err = d.pipeline(j.Model)
	} else {
		m, err = d.store.Model(j.Model) // validates the name
	}
	if err != nil {
		return err
	}
	if err := d.resolve(j); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.draining {
		return errDraining()
	}
	if d.queued >= d.cfg.QueueSize {
		d.metrics.rejected.Inc()
		return errorf(http.StatusTooManyRequests, "the queue is full (%d jobs waiting); retry later", d.queued)
	}
	var w *warm
	if j.image != nil {
		w = d.warmPipelineLocked(j.Model, p)
	} else {
		w = d.warmLocked(j.Model, m)
	}
	w.pending = append(w.pending, j)
	d.queued++
	d.metrics.queueDepth.Set(float64(d.queued))
	d.jobs.add(j)
	j.emit(Event{Type: "queued", Position: d.queued})
	select {
	case w.wake <- struct{}{}:
	default:
	}
	return nil
}

// warmLocked returns the warm model, starting to load it if needed.
func (d *Daemon) warmLocked(name string, m *store.Model) *warm {
	if w, ok := d.models[name]; ok {
		return w
	}
	w := &warm{name: name, manifest: m, ready: make(chan struct{}), wake: make(chan struct{}, 1), quit: make(chan struct{}), lastUsed: time.Now()}
	d.models[name] = w
	d.workers.Add(1)
	go d.worker(w)
	return w
}

// Load makes a model warm and waits until it is.
func (d *Daemon) Load(ctx context.Context, name string) error {
	m, err := d.store.Model(name) // validates the name
	if err != nil {
		return err
	}
	return d.warmAndWait(ctx, func() *warm { return d.warmLocked(name, m) })
}

// errDraining is the answer to work asked of a draining daemon.
func errDraining() error {
	return errorf(http.StatusServiceUnavailable, "the daemon is draining (shutting down or taken out of service): retry, another replica will take it")
}

// warmAndWait makes a model or pipeline warm (warmLocked, called with d.mu
// held, returns its warm entry, starting the load if needed) and waits
// until the load ends or ctx does. A draining daemon refuses.
func (d *Daemon) warmAndWait(ctx context.Context, warmLocked func() *warm) error {
	d.mu.Lock()
	if d.draining {
		d.mu.Unlock()
		return errDraining()
	}
	w := warmLocked()
	w.lastUsed = time.Now()
	d.mu.Unlock()
	select {
	case <-w.ready:
		return w.loadErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Unload stops a model's worker: queued jobs fail, the running one
// finishes, adapters are ejected and the weights released.
func (d *Daemon) Unload(name string) error {
	if err := names.Check("model", name); err != nil {
		return err
	}
	d.mu.Lock()
	w, ok := d.models[name]
	if !ok {
		d.mu.Unlock()
		return errorf(http.StatusNotFound, "model %q is not loaded", name)
	}
	d.retireLocked(w, errorf(http.StatusServiceUnavailable, "model %s was unloaded", name))
	d.mu.Unlock()
	return nil
}

// retireLocked removes a warm model from the table and tells its worker to
// stop after failing its queued jobs with err.
func (d *Daemon) retireLocked(w *warm, err error) {
	if err == nil {
		err = errorf(http.StatusServiceUnavailable, "model %s was unloaded", w.name)
	}
	delete(d.models, w.name)
	for _, j := range w.pending {
		j.finish(nil, err, statusOf(err))
		d.queued--
	}
	w.pending = nil
	d.metrics.queueDepth.Set(float64(d.queued))
	close(w.quit)
}

// worker loads a model, then runs its jobs until told to quit.
func (d *Daemon) worker(w *warm) {
	defer d.workers.Done()
	d.load(w)
	defer d.release(w)
	for {
		j := d.next(w)
		if j == nil {
			return
		}
		d.execute(w, j)
		d.mu.Lock()
		w.busy = false
		w.lastUsed = time.Now()
		d.mu.Unlock()
	}
}

// next picks the model's next job: one sharing the adapters already
// applied, while fewer than GroupLimit such jobs ran in a row, else the
// oldest. It returns nil when the worker must quit.
func (d *Daemon) next(w *warm) *Job {
	for {
		d.mu.Lock()
		select {
		case <-w.quit:
			d.mu.Unlock()
			return nil
		default:
		}
		if len(w.pending) > 0 {
			i := 0
			if w.applied != nil && w.streak < d.cfg.GroupLimit {
				if k := slices.IndexFunc(w.pending, func(j *Job) bool { return j.key == w.applied.key }); k >= 0 {
					i = k
				}
			}
			j := w.pending[i]
			w.pending = slices.Delete(w.pending, i, i+1)
			d.queued--
			d.metrics.queueDepth.Set(float64(d.queued))
			w.busy = true
			d.mu.Unlock()
			return j
		}
		d.mu.Unlock()
		select {
		case <-w.wake:
		case <-w.quit:
		}
	}
}

// load builds the model from its spec and loads its weights (strictly).
func (d *Daemon) load(w *warm) {
	defer close(w.ready)
	start := time.Now()
	err := func() error {
		if w.pipe != nil {
			return d.loadPipeline(w)
		}
		sp, err := d.store.LoadSpec(w.manifest)
		if err != nil {
			return err
		}
		m, err := sp.Build(w.manifest.Overrides)
		if err != nil {
			return err
		}
		path, err := d.store.BlobPath(w.manifest.Weights.Digest)
		if err != nil {
			return err
		}
		f, err := weights.Open(path)
		if err != nil {
			return err
		}
		err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
			_, err := core.LoadState(s, m, f, core.LoadOptions{Strict: true, Prefix: w.manifest.Prefix})
			return err
		})
		if err != nil {
			f.Close()
			return err
		}
		w.chain, w.file = m, f
		return nil
	}()
	if err != nil {
		w.loadErr = fmt.Errorf("load model %s: %w", w.name, err)
		d.log.Error("model failed to load", "model", w.name, "error", err)
		d.mu.Lock()
		if d.models[w.name] == w {
			d.retireLocked(w, w.loadErr)
		}
		d.mu.Unlock()
		return
	}
	d.metrics.modelLoads.Inc()
	d.log.Info("model loaded", "model", w.name, "seconds", time.Since(start).Seconds())
}

// release ejects the adapters and frees the weights of a retired model.
func (d *Daemon) release(w *warm) {
	if w.pipe != nil && w.pipe.model != nil {
		d.swap(w, nil)
		w.pipe.model.Release()
		w.pipe.model = nil
		d.log.Info("pipeline unloaded", "pipeline", w.pipe.name)
		return
	}
	if w.chain == nil {
		return
	}
	d.swap(w, nil)
	core.ReleaseParams(w.chain)
	w.file.Close()
	w.chain = nil
	d.log.Info("model unloaded", "model", w.name)
}

// swap removes the applied adapters and applies j's (nil: none). On
// failure the model is left with no adapters.
func (d *Daemon) swap(w *warm, j *Job) error {
	if w.applied != nil {
		var errs []error
		for i := len(w.applied.undo) - 1; i >= 0; i-- {
			errs = append(errs, w.applied.undo[i]())
		}
		w.applied = nil
		if err := errors.Join(errs...); err != nil {
			// The tree may no longer be the base model: retire it rather
			// than serve wrong numbers.
			d.log.Error("ejecting adapters failed; unloading the model", "model", w.name, "error", err)
			d.mu.Lock()
			if d.models[w.name] == w {
				d.retireLocked(w, fmt.Errorf("model %s: ejecting adapters failed: %w", w.name, err))
			}
			d.mu.Unlock()
			return fmt.Errorf("eject adapters: %w", err)
		}
	}
	w.streak = 0
	if j == nil || len(j.resolved) == 0 {
		return nil
	}
	set := &appliedSet{key: j.key}
	err := tensor.Run(j.ctx, func(s *tensor.Scope) error {
		if w.pipe != nil {
			return d.applyPipelineAdapters(s, w.pipe.model, j, set)
		}
		model := adapt.Summarize(w.chain)
		for i, a := range j.resolved {
			rep, undo, err := d.applyOne(j.ctx, s, w.chain, model, i, a, j.Fuse)
			if err != nil {
				return fmt.Errorf("adapters[%d] (%s %s): %w", i, a.req.Plugin, a.req.File, err)
			}
			set.undo = append(set.undo, undo)
			set.reports = append(set.reports, rep)
		}
		return nil
	})
	if err != nil {
		for i := len(set.undo) - 1; i >= 0; i-- {
			set.undo[i]()
		}
		return err
	}
	w.applied = set
	d.metrics.adapterSwaps.Inc()
	return nil
}

func (d *Daemon) applyOne(ctx context.Context, s *tensor.Scope, m *core.Chain, model []sdk.Layer, i int, a resolvedAdapter, fuse bool) (AdapterReport, func() error, error) {
	rep := AdapterReport{Plugin: a.req.Plugin, File: a.req.File, Digest: a.digest}
	f, err := weights.Open(a.path)
	if err != nil {
		return rep, nil, errorf(http.StatusBadRequest, "%v", err)
	}
	defer f.Close() // applied tensors view the mapping, which outlives Close while they live
	op := a.req.Operation
	if op == "" {
		desc, err := d.host.Describe(ctx, a.req.Plugin)
		if err != nil {
			return rep, nil, errorf(pluginStatus(err), "%v", err)
		}
		if len(desc.Operations) == 0 {
			return rep, nil, errorf(http.StatusBadGateway, "plugin %s has no operations", a.req.Plugin)
		}
		op = desc.Operations[0].Name
	}
	id := fmt.Sprintf("file%d", i)
	plan, err := d.host.Plan(ctx, a.req.Plugin, &sdk.PlanRequest{Operation: op, Params: a.params, Model: model,
		Files: []sdk.File{adapt.Header(id, strings.TrimPrefix(a.digest, "sha256:"), f)}})
	if err != nil {
		return rep, nil, errorf(pluginStatus(err), "%v", err)
	}
	r := plan.Report
	if r == nil {
		r = &sdk.Report{}
	}
	rep.Format, rep.LayersAdapted, rep.Matched = r.Format, len(plan.Patches), len(r.Matched)
	rep.Unmatched, rep.ShapeMismatched, rep.Warnings, rep.EffectiveScales = r.Unmatched, r.ShapeMismatched, r.Warnings, r.EffectiveScales
	files := map[string]*weights.File{id: f}
	if fuse {
		fu, err := adapt.Fuse(s, m, plan, files)
		if err != nil {
			return rep, nil, errorf(http.StatusUnprocessableEntity, "%v", err)
		}
		return rep, fu.Unfuse, nil
	}
	ap, err := adapt.Apply(s, m, plan, files)
	if err != nil {
		return rep, nil, errorf(http.StatusUnprocessableEntity, "%v", err)
	}
	return rep, ap.Eject, nil
}

// pluginStatus maps a plugin call's code (never its text) to an HTTP
// status: the plugin's verdict on the request's input is the client's
// problem (400, or 422 for a request that does not apply to this model);
// anything else — a crash, a hang, an error without a code — is the
// plugin's (502).
func pluginStatus(err error) int {
	switch sdk.CodeOf(err) {
	case sdk.InvalidArgument, sdk.NotFound:
		return http.StatusBadRequest
	case sdk.FailedPrecondition:
		return http.StatusUnprocessableEntity
	}
	return http.StatusBadGateway
}

// execute runs one job on a warm model (loaded: a failed load retires the
// worker before it takes any job).
func (d *Daemon) execute(w *warm, j *Job) {
	if !j.start() {
		return // canceled while queued
	}
	begin := time.Now()
	j.mu.Lock()
	d.metrics.queueWait.Observe(j.started.Sub(j.created).Seconds())
	j.mu.Unlock()
	defer func() {
		d.metrics.jobs.WithLabelValues(j.status().State).Inc()
		d.metrics.jobSeconds.Observe(time.Since(begin).Seconds())
	}()
	if err := j.ctx.Err(); err != nil {
		j.finish(nil, err, 0)
		return
	}
	reused := w.applied != nil && w.applied.key == j.key || w.applied == nil && len(j.resolved) == 0
	if !reused {
		if err := d.swap(w, j); err != nil {
			j.finish(nil, err, statusOf(err))
			return
		}
	}
	w.streak++
	var reports []AdapterReport
	if w.applied != nil {
		for _, r := range w.applied.reports {
			r.Reused = reused
			reports = append(reports, r)
		}
	}
	j.mu.Lock()
	j.reports = reports
	j.mu.Unlock()
	if len(reports) > 0 {
		j.emit(Event{Type: "adapters", Adapters: reports})
	}
	if j.image != nil {
		if err := d.generate(w, j); err != nil {
			j.finish(nil, err, statusOf(err))
			return
		}
		j.finish(nil, nil, 0)
		return
	}
	outputs, err := d.forward(w, j)
	if err != nil {
		j.finish(nil, err, statusOf(err))
		return
	}
	j.finish(outputs, nil, 0)
}

// forward runs the model on the job's inputs, named as `refinersd run`
// names them (input.N, context.<name>.<key>), and returns output.N.
func (d *Daemon) forward(w *warm, j *Job) (map[string]weights.Raw, error) {
	outputs := map[string]weights.Raw{}
	err := tensor.Run(j.ctx, func(s *tensor.Scope) error {
		call := core.Call{Ctx: j.ctx, Contexts: core.Contexts{},
			Progress: func(p core.Progress) { j.emit(Event{Type: "progress", Done: p.Done, Total: p.Total, Layer: p.Layer}) }}
		var inputs []*tensor.Tensor
		names := make([]string, 0, len(j.inputs))
		for k := range j.inputs {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			r := j.inputs[k]
			t := s.FromBytes(r.Data, r.DType, r.Shape...)
			if ctxName, key, ok := strings.Cut(strings.TrimPrefix(k, "context."), "."); ok && strings.HasPrefix(k, "context.") {
				if call.Contexts[ctxName] == nil {
					call.Contexts[ctxName] = map[string]any{}
				}
				call.Contexts[ctxName][key] = t
			}
		}
		for i := 0; ; i++ {
			r, ok := j.inputs[fmt.Sprintf("input.%d", i)]
			if !ok {
				break
			}
			inputs = append(inputs, s.FromBytes(r.Data, r.DType, r.Shape...))
		}
		if err := s.Err(); err != nil {
			return errorf(http.StatusBadRequest, "inputs: %v", err)
		}
		if err := d.admit(s, w, j, call, inputs); err != nil {
			return err
		}
		outs, err := call.Forward(s, w.chain, inputs...)
		if err != nil {
			if j.ctx.Err() != nil {
				return err
			}
			return errorf(http.StatusUnprocessableEntity, "%v", err)
		}
		for i, t := range outs {
			outputs[fmt.Sprintf("output.%d", i)] = weights.Raw{DType: t.DType(), Shape: t.Shape(), Data: s.Bytes(s.Contiguous(t))}
		}
		return s.Err()
	})
	return outputs, err
}

// admissionError is a run refused because its estimated activation
// memory is over MaxActivation.
type admissionError struct{ estimate, budget int64 }

func (e *admissionError) Error() string {
	return fmt.Sprintf("the run needs about %s of activation memory (estimated from the model and the input shapes), more than this daemon's max_activation of %s; send smaller inputs or a smaller batch",
		humanBytes(e.estimate), humanBytes(e.budget))
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d bytes", n)
}

// admit estimates a job's activation memory (a dry run, see
// core.Call.EstimatePeak; cached by adapter set and input shapes) and
// refuses it over MaxActivation. A model whose dry run fails is logged
// and admitted: the estimate is a guard, not a second implementation.
func (d *Daemon) admit(s *tensor.Scope, w *warm, j *Job, call core.Call, inputs []*tensor.Tensor) error {
	if d.cfg.MaxActivation <= 0 {
		return nil
	}
	key := j.key + "\x00" + shapesKey(j.inputs)
	est, ok := w.estimates[key]
	if !ok {
		var err error
		est, err = call.EstimatePeak(s, w.chain, inputs...)
		if err != nil {
			d.log.Warn("cannot estimate activation memory; admitting the run", "model", w.name, "error", err)
			est = -1
		}
		if w.estimates == nil || len(w.estimates) >= 256 {
			w.estimates = map[string]int64{}
		}
		w.estimates[key] = est
	}
	if est > d.cfg.MaxActivation {
		d.metrics.refused.Inc()
		return &admissionError{estimate: est, budget: d.cfg.MaxActivation}
	}
	return nil
}

// shapesKey names the inputs' names, dtypes and shapes.
func shapesKey(inputs map[string]weights.Raw) string {
	names := make([]string, 0, len(inputs))
	for k := range inputs {
		names = append(names, k)
	}
	sort.Strings(names)
	var sb strings.Builder
	for _, k := range names {
		fmt.Fprintf(&sb, "%s:%s%v;", k, inputs[k].DType, inputs[k].Shape)
	}
	return sb.String()
}

// Cancel cancels a job: a queued one ends at once, a running one at its
// next layer boundary.
func (d *Daemon) Cancel(j *Job) {
	d.mu.Lock()
	for _, w := range d.models {
		if i := slices.Index(w.pending, j); i >= 0 {
			w.pending = slices.Delete(w.pending, i, i+1)
			d.queued--
			d.metrics.queueDepth.Set(float64(d.queued))
		}
	}
	d.mu.Unlock()
	j.cancel()
	j.finish(nil, context.Canceled, 0)
}

// reaper unloads models idle for longer than KeepAlive.
func (d *Daemon) reaper() {
	if d.cfg.KeepAlive <= 0 {
		return
	}
	tick := time.NewTicker(min(d.cfg.KeepAlive/4+time.Millisecond, 10*time.Second))
	defer tick.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-tick.C:
		}
		d.mu.Lock()
		for _, w := range d.models {
			if !w.busy && len(w.pending) == 0 && time.Since(w.lastUsed) > d.cfg.KeepAlive && !slices.Contains(d.cfg.Preload, w.name) &&
				(w.pipe == nil || !w.pipe.cfg.Preload) {
				d.log.Info("unloading idle model", "model", w.name, "idle", time.Since(w.lastUsed).Round(time.Second))
				d.retireLocked(w, nil)
			}
		}
		d.mu.Unlock()
	}
}

// ModelState is a model's place in memory.
type ModelState struct {
	Loaded   bool       `json:"loaded"`
	Loading  bool       `json:"loading,omitempty"`
	Queued   int        `json:"queued"`
	LastUsed *time.Time `json:"last_used,omitempty"`
	Adapters []string   `json:"adapters,omitempty"` // files of the applied adapters
}

func (d *Daemon) modelState(name string) ModelState {
	d.mu.Lock()
	defer d.mu.Unlock()
	w, ok := d.models[name]
	if !ok {
		return ModelState{}
	}
	st := ModelState{Queued: len(w.pending)}
	select {
	case <-w.ready:
		st.Loaded = w.loadErr == nil
	default:
		st.Loading = true
	}
	t := w.lastUsed
	st.LastUsed = &t
	if w.applied != nil && !w.busy {
		for _, r := range w.applied.reports {
			st.Adapters = append(st.Adapters, r.File)
		}
	}
	return st
}

// Draining reports whether the daemon is shutting down.
func (d *Daemon) Draining() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.draining
}

// Drain stops new work: Submit fails with 503 (a load balancer retries it
// on another replica) and readiness fails. The jobs the daemon already
// took, queued or running, go on to the end.
func (d *Daemon) Drain() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.draining {
		return
	}
	d.draining = true
	d.metrics.draining.Set(1)
	d.log.Info("draining", "queued", d.queued)
}

// DrainStatus is what POST /v1/admin/drain answers.
type DrainStatus struct {
	Draining bool `json:"draining"`
	Queued   int  `json:"queued"`  // jobs waiting, which will still run
	Running  int  `json:"running"` // jobs running
}

func (d *Daemon) drainStatus() DrainStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := DrainStatus{Draining: d.draining, Queued: d.queued}
	for _, w := range d.models {
		if w.busy {
			st.Running++
		}
	}
	return st
}

// CancelRunning cancels every running job (at its next layer boundary).
func (d *Daemon) CancelRunning() {
	for _, j := range d.jobs.list() {
		j.cancel()
	}
}

// Close drains, fails the queued jobs (503), stops every worker (ejecting
// adapters and freeing weights) and stops the plugins. Jobs still running
// are waited for: cancel them first (CancelRunning) to bound the wait.
func (d *Daemon) Close() {
	d.Drain()
	d.mu.Lock()
	for _, w := range d.models {
		d.retireLocked(w, nil)
	}
	d.mu.Unlock()
	close(d.stop)
	d.workers.Wait()
	d.segs.close()
	d.host.Close()
}
