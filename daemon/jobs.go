package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"regexp"
	"sync"
	"time"

	"github.com/refiners-go/refiners/core/weights"
)

// Job states.
const (
	Queued   = "queued"
	Running  = "running"
	Done     = "done"
	Failed   = "failed"
	Canceled = "canceled"
)

// AdapterRequest is one adapter of a run: a plugin, a file from the store
// (an adapter name or a blob digest), the operation (default: the plugin's
// first) and its parameters. Scale, if set, is passed as params.scale.
type AdapterRequest struct {
	Plugin    string         `json:"plugin"`
	File      string         `json:"file"`
	Operation string         `json:"operation,omitempty"`
	Params    map[string]any `json:"params,omitempty"`
	Scale     *float64       `json:"scale,omitempty"`
}

// AdapterReport is what applying one adapter did: the plugin's match
// report, summarised.
type AdapterReport struct {
	Plugin          string             `json:"plugin"`
	File            string             `json:"file"`
	Digest          string             `json:"digest"`
	Format          string             `json:"format,omitempty"`
	LayersAdapted   int                `json:"layers_adapted"`
	Matched         int                `json:"matched"`
	Unmatched       []string           `json:"unmatched,omitempty"`
	ShapeMismatched []string           `json:"shape_mismatched,omitempty"`
	EffectiveScales map[string]float64 `json:"-"`
	Warnings        []string           `json:"warnings,omitempty"`
	Reused          bool               `json:"reused"` // already applied for an earlier job of the group
}

// Event is one step of a job's life, as streamed to clients.
type Event struct {
	Seq      int       `json:"seq"`
	Time     time.Time `json:"time"`
	Type     string    `json:"type"` // queued, started, adapters, progress, step, done, failed, canceled
	Position int       `json:"position,omitempty"`
	// An image job's denoising step: Step of Steps done, with a preview
	// (PNG, latent size) when the request asked for one; only the latest
	// step event keeps its preview.
	Step       int             `json:"step,omitempty"`
	Steps      int             `json:"steps,omitempty"`
	PreviewPNG string          `json:"preview_png_base64,omitempty"`
	Done       int             `json:"done,omitempty"`
	Total      int             `json:"total,omitempty"`
	Layer      string          `json:"layer,omitempty"`
	Adapters   []AdapterReport `json:"adapters,omitempty"`
	Error      string          `json:"error,omitempty"`
}

// Job is one run request on its way through the daemon.
type Job struct {
	ID       string
	Model    string
	Adapters []AdapterRequest
	Fuse     bool
	inputs   map[string]weights.Raw
	image    *imageJob // an image generation (POST /v1/images) instead of a run
	key      string    // identifies the adapter set, for grouping
	resolved []resolvedAdapter

	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	state    string
	events   []Event
	changed  chan struct{} // closed and replaced at every event
	outputs  map[string]weights.Raw
	reports  []AdapterReport
	err      error
	code     int // HTTP status for a failure
	created  time.Time
	started  time.Time
	finished time.Time
}

func newJobID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

var jobIDRE = regexp.MustCompile(`^[0-9a-f]{24}$`)

func newJob(parent context.Context) *Job {
	ctx, cancel := context.WithCancel(parent)
	return &Job{ID: newJobID(), ctx: ctx, cancel: cancel, state: Queued, changed: make(chan struct{}), created: time.Now()}
}

// emit appends an event and wakes watchers.
func (j *Job) emit(e Event) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.emitLocked(e)
}

func (j *Job) emitLocked(e Event) {
	e.Seq = len(j.events)
	e.Time = time.Now()
	j.events = append(j.events, e)
	close(j.changed)
	j.changed = make(chan struct{})
}

// start marks the job running, unless it was canceled while queued.
func (j *Job) start() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.state != Queued {
		return false
	}
	j.state, j.started = Running, time.Now()
	j.emitLocked(Event{Type: "started"})
	return true
}

// finish ends the job once; later calls do nothing.
func (j *Job) finish(outputs map[string]weights.Raw, err error, code int) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.state == Done || j.state == Failed || j.state == Canceled {
		return
	}
	j.finished = time.Now()
	switch {
	case err == nil:
		j.state, j.outputs = Done, outputs
		j.emitLocked(Event{Type: "done"})
	case j.ctx.Err() != nil && (code == 0 || errors.Is(err, context.Canceled)):
		j.state, j.err, j.code = Canceled, err, 499
		j.emitLocked(Event{Type: "canceled", Error: err.Error()})
	default:
		if code == 0 {
			code = 500
		}
		j.state, j.err, j.code = Failed, err, code
		j.emitLocked(Event{Type: "failed", Error: err.Error()})
	}
	j.inputs = nil
	for i := range j.events { // the result replaces the previews
		j.events[i].PreviewPNG = ""
	}
	j.cancel()
}

// emitStep appends a step event, dropping the preview of the one before
// so that a job holds one preview at most.
func (j *Job) emitStep(e Event) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for i := len(j.events) - 1; i >= 0; i-- {
		if j.events[i].Type == "step" {
			j.events[i].PreviewPNG = ""
			break
		}
	}
	j.emitLocked(e)
}

// terminal reports whether the job has ended.
func (j *Job) terminal() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.state == Done || j.state == Failed || j.state == Canceled
}

// wait blocks until the job ends or ctx is done.
func (j *Job) wait(ctx context.Context) bool {
	for {
		j.mu.Lock()
		ended := j.state == Done || j.state == Failed || j.state == Canceled
		ch := j.changed
		j.mu.Unlock()
		if ended {
			return true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

// eventsFrom returns the events from seq on, and a channel closed at the
// next event.
func (j *Job) eventsFrom(seq int) ([]Event, <-chan struct{}, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	ended := j.state == Done || j.state == Failed || j.state == Canceled
	if seq > len(j.events) {
		seq = len(j.events)
	}
	return append([]Event(nil), j.events[seq:]...), j.changed, ended
}

// JobStatus is a job as the API shows it.
type JobStatus struct {
	ID       string          `json:"id"`
	Model    string          `json:"model"`
	State    string          `json:"state"`
	Error    string          `json:"error,omitempty"`
	Progress *Event          `json:"progress,omitempty"`
	Adapters []AdapterReport `json:"adapters,omitempty"`
	Created  time.Time       `json:"created"`
	Started  *time.Time      `json:"started,omitempty"`
	Finished *time.Time      `json:"finished,omitempty"`
}

func (j *Job) status() JobStatus {
	j.mu.Lock()
	defer j.mu.Unlock()
	st := JobStatus{ID: j.ID, Model: j.Model, State: j.state, Adapters: j.reports, Created: j.created}
	if j.err != nil {
		st.Error = j.err.Error()
	}
	for i := len(j.events) - 1; i >= 0; i-- {
		if j.events[i].Type == "progress" || j.events[i].Type == "step" {
			e := j.events[i]
			st.Progress = &e
			break
		}
	}
	if !j.started.IsZero() {
		t := j.started
		st.Started = &t
	}
	if !j.finished.IsZero() {
		t := j.finished
		st.Finished = &t
	}
	return st
}

// jobTable holds jobs by id. Finished jobs stay readable for a while, and
// only so many are kept, so memory stays bounded.
type jobTable struct {
	mu      sync.Mutex
	jobs    map[string]*Job
	order   []string // insertion order, for eviction
	ttl     time.Duration
	maxDone int
}

func newJobTable(ttl time.Duration, maxDone int) *jobTable {
	return &jobTable{jobs: map[string]*Job{}, ttl: ttl, maxDone: maxDone}
}

func (t *jobTable) add(j *Job) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.jobs[j.ID] = j
	t.order = append(t.order, j.ID)
	t.evictLocked()
}

func (t *jobTable) get(id string) (*Job, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	j, ok := t.jobs[id]
	return j, ok
}

func (t *jobTable) remove(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.jobs, id)
}

func (t *jobTable) list() []*Job {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.evictLocked()
	out := make([]*Job, 0, len(t.jobs))
	for _, id := range t.order {
		if j, ok := t.jobs[id]; ok {
			out = append(out, j)
		}
	}
	return out
}

// evictLocked drops finished jobs past their TTL, then the oldest finished
// ones beyond maxDone.
func (t *jobTable) evictLocked() {
	var done []string
	kept := t.order[:0]
	for _, id := range t.order {
		j, ok := t.jobs[id]
		if !ok {
			continue
		}
		j.mu.Lock()
		ended := !j.finished.IsZero()
		old := ended && time.Since(j.finished) > t.ttl
		j.mu.Unlock()
		if old {
			delete(t.jobs, id)
			continue
		}
		if ended {
			done = append(done, id)
		}
		kept = append(kept, id)
	}
	t.order = kept
	for len(done) > t.maxDone {
		delete(t.jobs, done[0])
		done = done[1:]
	}
}
