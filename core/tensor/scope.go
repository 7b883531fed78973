package tensor

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/sugarme/gotch/ts"
)

// Scope owns the tensors made inside it and drops them when it closes, except
// those it is told to keep: kept tensors move to the parent scope. Scopes nest
// like the layers that open them, so intermediates die as soon as the layer
// that made them returns.
//
// A Scope also carries a sticky error, in the style of bufio.Scanner: once an
// op fails, later ops return nil without calling libtorch and Err reports the
// first failure. Layer code stays a readable list of ops with one check at
// the end. A child's error reaches its parent when the child closes, unless
// the code that opened the child took it (TakeErr) to return it as a value.
//
// A Scope belongs to the worker that runs it; it must not be shared across
// goroutines.
type Scope struct {
	parent *Scope
	owned  []*Tensor
	err    error
	taken  bool // err was returned to a caller; Close does not propagate it
	closed bool
	meter  *Meter // a dry run's byte count (see Metered); inherited by children
}

// Err returns the first error any op in this scope (or a child) hit.
func (s *Scope) Err() error { return s.err }

// Fail records err as the scope's error if none is recorded yet.
func (s *Scope) Fail(err error) {
	if err != nil && s.err == nil {
		s.err = err
	}
}

// TakeErr returns the scope's error and marks it handled: closing the scope
// will not pass it on to the parent, because the caller returns it instead.
func (s *Scope) TakeErr() error {
	s.taken = true
	return s.err
}

// Failf records a formatted error.
func (s *Scope) Failf(format string, args ...any) { s.Fail(fmt.Errorf(format, args...)) }

// Child opens a nested scope.
func (s *Scope) Child() *Scope { return &Scope{parent: s, err: s.err, meter: s.meter} }

// Close drops every tensor this scope still owns, except keep, which move to
// the parent scope (or become unowned at the root). Closing twice is a no-op.
func (s *Scope) Close(keep ...*Tensor) {
	if s.closed {
		return
	}
	s.closed = true
	if s.err != nil && !s.taken && s.parent != nil {
		s.parent.Fail(s.err)
	}
	for _, t := range keep {
		if t != nil && t.owner == s {
			s.adopt(t)
		}
	}
	for _, t := range s.owned {
		if t.owner == s {
			t.Drop()
		}
	}
	s.owned = nil
}

func (s *Scope) adopt(t *Tensor) {
	t.owner = s.parent
	if s.parent != nil {
		s.parent.track(t)
	}
}

// Escape releases t from scope ownership: it outlives every scope and its
// holder (a module's weights, a context store) must call Drop.
func (s *Scope) Escape(t *Tensor) *Tensor {
	if t != nil {
		t.owner = nil
	}
	return t
}

// Live counts tensors this scope owns that are still allocated; tests use it
// to check that scopes release what they should.
func (s *Scope) Live() int {
	n := 0
	for _, t := range s.owned {
		if t.owner == s && t.h != nil {
			n++
		}
	}
	return n
}

// created counts tensor handles made since the process started.
var created atomic.Int64

// Created is the number of tensor handles made so far, process-wide; a
// code path that must not allocate tensors (a dry run) is checked with it.
func Created() int64 { return created.Load() }

// wrap takes ownership of a fresh gotch tensor.
func (s *Scope) wrap(h *ts.Tensor) *Tensor {
	created.Add(1)
	t := &Tensor{h: h, owner: s}
	s.track(t)
	return t
}

// track appends t to the owned list. Before the list grows, entries already
// released (Release, Drop) or handed to another scope are swept out, so a
// long-lived scope that releases as it goes stays bounded: the list holds
// at most about twice the live tensors.
func (s *Scope) track(t *Tensor) {
	if len(s.owned) == cap(s.owned) && len(s.owned) > 0 {
		live := s.owned[:0]
		for _, o := range s.owned {
			if o.h != nil && o.owner == s {
				live = append(live, o)
			}
		}
		clear(s.owned[len(live):])
		s.owned = live
		if len(live) > cap(live)/2 {
			s.owned = append(make([]*Tensor, 0, 2*cap(live)), live...)
		}
	}
	s.owned = append(s.owned, t)
}

// op runs one libtorch call on a pinned thread. It returns nil without
// calling f when the scope has already failed or an input is not valid.
func (s *Scope) op(name string, f func() (*ts.Tensor, error), inputs ...*Tensor) *Tensor {
	t := s.call(name, f, inputs...)
	if t != nil {
		s.meterNew(t, false)
	}
	return t
}

// view is op for calls whose result shares its input's storage.
func (s *Scope) view(name string, f func() (*ts.Tensor, error), inputs ...*Tensor) *Tensor {
	return s.call(name, f, inputs...)
}

func (s *Scope) call(name string, f func() (*ts.Tensor, error), inputs ...*Tensor) *Tensor {
	if s.err != nil {
		return nil
	}
	for i, in := range inputs {
		if !in.Valid() {
			s.Failf("%s: input %d is nil or dropped", name, i)
			return nil
		}
	}
	runtime.LockOSThread()
	h, err := f()
	runtime.UnlockOSThread()
	if err != nil {
		s.Failf("%s: %w", name, cleanErr(err))
		return nil
	}
	return s.wrap(h)
}

// ops is op for calls that return several tensors.
// Their results are views of the input (chunk, split).
func (s *Scope) ops(name string, f func() ([]*ts.Tensor, error), inputs ...*Tensor) []*Tensor {
	if s.err != nil {
		return nil
	}
	for i, in := range inputs {
		if !in.Valid() {
			s.Failf("%s: input %d is nil or dropped", name, i)
			return nil
		}
	}
	runtime.LockOSThread()
	hs, err := f()
	runtime.UnlockOSThread()
	if err != nil {
		s.Failf("%s: %w", name, cleanErr(err))
		return nil
	}
	out := make([]*Tensor, len(hs))
	for i, h := range hs {
		out[i] = s.wrap(h)
	}
	return out
}

// Run executes f on a worker goroutine pinned to an OS thread with autograd
// disabled, in a fresh root scope. Tensors f leaves in the scope are dropped
// when it returns; to hand a tensor out, Escape it (and Drop it later) or
// copy its values into Go memory first.
func Run(ctx context.Context, f func(s *Scope) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	w := pool.get()
	done := make(chan error, 1)
	healthy := false
	w.jobs <- func() {
		s := &Scope{}
		returned := false
		var err error
		defer func() {
			// Runs on return, panic and runtime.Goexit alike, so the caller
			// is never left waiting.
			r := recover()
			if r != nil {
				err = fmt.Errorf("tensor: panic in worker: %v", r)
			} else if !returned {
				err = errors.New("tensor: job exited its worker (runtime.Goexit, e.g. t.FailNow)")
			}
			if err == nil {
				err = s.err
			}
			s.Close()
			// After Goexit the goroutine (and its thread) is gone; after a
			// recovered panic or a return the worker is fine to reuse.
			healthy = returned || r != nil
			done <- err
		}()
		err = f(s)
		returned = true
	}
	err := <-done
	if healthy {
		pool.put(w)
	}
	return err
}

// worker is a goroutine locked to one OS thread for its whole life, so that
// libtorch's thread-local state (grad mode, last error, CUDA device) is
// consistent for every job it runs.
type worker struct {
	jobs chan func()
}

type workerPool struct {
	mu   sync.Mutex
	idle []*worker
}

var pool workerPool

var errGradMode = errors.New("tensor: could not disable autograd on worker thread")

func (p *workerPool) get() *worker {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		w := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return w
	}
	p.mu.Unlock()
	w := &worker{jobs: make(chan func())}
	ready := make(chan error)
	go func() {
		runtime.LockOSThread()
		// Inference only: no autograd graph is ever recorded on this thread.
		_, err := ts.GradSetEnabled(false)
		if err != nil {
			ready <- fmt.Errorf("%w: %v", errGradMode, err)
			return
		}
		ready <- nil
		for job := range w.jobs {
			job()
		}
	}()
	if err := <-ready; err != nil {
		panic(err) // libtorch itself is broken; nothing can run
	}
	return w
}

func (p *workerPool) put(w *worker) {
	p.mu.Lock()
	p.idle = append(p.idle, w)
	p.mu.Unlock()
}

// Release drops t now if this scope owns it; otherwise it does nothing.
// Chains use it to free an intermediate as soon as it has been consumed.
func (s *Scope) Release(t *Tensor) {
	if t != nil && t.owner == s {
		t.Drop()
	}
}
