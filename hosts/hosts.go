// Package hosts installs, verifies, launches and supervises plugins. A
// plugin is a separate process (hashicorp/go-plugin over gRPC with mutual
// TLS); its binary is pinned by sha256 in a lockfile and checked at every
// launch. A plugin that crashes or hangs fails the one call it was serving
// with a clear error; the next call starts it again. The host process never
// goes down with a plugin. Calls speak the sdk's plain types, and a failed
// call is a CallError with a code. Turning a plan into adapters is package
// adapt's job; the conformance kit (Check) lives here.
package hosts

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/refiners-go/refiners/internal/atomicfile"
	"github.com/refiners-go/refiners/internal/names"
	"github.com/refiners-go/refiners/sdk"
)

// Entry is a plugin recorded in the lockfile.
type Entry struct {
	Name     string `json:"name"`
	Version  string `json:"version"`
	Protocol uint32 `json:"protocol"`
	SHA256   string `json:"sha256"`
	File     string `json:"file"` // binary name inside the plugins directory
}

// lockName is the lockfile inside the plugins directory.
const lockName = "plugins.lock.json"

// Options tune a Host.
type Options struct {
	Logger       hclog.Logger
	CallTimeout  time.Duration // per Describe/Plan call (default 30s)
	StartTimeout time.Duration // for a plugin to start (default 20s)
}

// Host manages the plugins of one plugins directory.
type Host struct {
	dir  string
	opts Options
	log  hclog.Logger

	mu      sync.Mutex
	running map[string]*running
	started map[string]int // launches per plugin
	closed  bool
}

type running struct {
	cmd      *exec.Cmd
	client   *plugin.Client
	rpc      plugin.ClientProtocol
	planner  sdk.Planner
	entry    Entry
	lastUsed time.Time
}

// idleCheck is how long a plugin may sit unused before it is pinged
// before its next call.
const idleCheck = 30 * time.Second

// New opens a plugins directory, creating it if needed.
func New(dir string, o Options) (*Host, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("plugins directory: %w", err)
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.CallTimeout == 0 {
		o.CallTimeout = 30 * time.Second
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = 20 * time.Second
	}
	return &Host{dir: dir, opts: o, log: o.Logger.Named("plugins"), running: map[string]*running{}, started: map[string]int{}}, nil
}

// List returns the installed plugins, by name.
func (h *Host) List() ([]Entry, error) {
	entries, err := h.readLock()
	if err != nil {
		return nil, err
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
	return entries, nil
}

func (h *Host) readLock() ([]Entry, error) {
	b, err := os.ReadFile(filepath.Join(h.dir, lockName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("plugin lockfile: %w", err)
	}
	var entries []Entry
	if err := json.Unmarshal(b, &entries); err != nil {
		return nil, fmt.Errorf("plugin lockfile %s: %w", filepath.Join(h.dir, lockName), err)
	}
	return entries, nil
}

func (h *Host) writeLock(entries []Entry) error {
	b, err := json.MarshalIndent(entries, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(h.dir, lockName), append(b, '\n'), 0o644)
}

// Verify checks that an installed plugin's binary is still the one that
// was installed (the check every launch makes): nil, or why not.
func (h *Host) Verify(e Entry) error {
	path := filepath.Join(h.dir, e.File)
	sum, err := FileSHA256(path)
	if err != nil {
		return fmt.Errorf("binary %s: %w", path, err)
	}
	if sum != e.SHA256 {
		return fmt.Errorf("binary %s changed since it was installed (sha256 %s, lockfile has %s)", path, sum, e.SHA256)
	}
	return nil
}

// lookup returns the lockfile entry of an installed plugin.
func (h *Host) lookup(name string) (Entry, error) {
	entries, err := h.readLock()
	if err != nil {
		return Entry{}, err
	}
	for _, e := range entries {
		if e.Name == name {
			return e, nil
		}
	}
	return Entry{}, callErrorf(name, "start", codes.NotFound, "plugin %q is not installed (see `refinersd plugins list`)", name)
}

// Install copies a plugin binary into the plugins directory, asks it to
// describe itself, and records its name, version, protocol and sha256. A
// plugin with the same name is replaced.
func (h *Host) Install(ctx context.Context, path string) (Entry, error) {
	sum, err := FileSHA256(path)
	if err != nil {
		return Entry{}, fmt.Errorf("install %s: %w", path, err)
	}
	// Describe it from a private copy, so what we check is what we keep;
	// the copy becomes the installed binary at once.
	tmp, err := atomicfile.Create(h.dir)
	if err != nil {
		return Entry{}, fmt.Errorf("install %s: %w", path, err)
	}
	defer tmp.Abort()
	if err := copyInto(tmp, path); err != nil {
		return Entry{}, fmt.Errorf("install %s: %w", path, err)
	}
	if err := tmp.Seal(0o755); err != nil {
		return Entry{}, fmt.Errorf("install %s: %w", path, err)
	}
	desc, err := h.describeBinary(ctx, tmp.Name(), sum)
	if err != nil {
		return Entry{}, fmt.Errorf("install %s: %w", path, err)
	}
	if err := names.Check("plugin", desc.Name); err != nil {
		return Entry{}, fmt.Errorf("install %s: %w", path, err)
	}
	if desc.Protocol != sdk.ProtocolVersion {
		return Entry{}, fmt.Errorf("install %s: plugin speaks protocol %d, this host speaks %d", path, desc.Protocol, sdk.ProtocolVersion)
	}
	e := Entry{Name: desc.Name, Version: desc.Version, Protocol: desc.Protocol, SHA256: sum, File: desc.Name + ".plugin"}
	h.stop(e.Name)
	if err := tmp.Commit(filepath.Join(h.dir, e.File), 0o755); err != nil {
		return Entry{}, fmt.Errorf("install %s: %w", path, err)
	}
	entries, err := h.readLock()
	if err != nil {
		return Entry{}, err
	}
	kept := entries[:0]
	for _, old := range entries {
		if old.Name != e.Name {
			kept = append(kept, old)
		}
	}
	if err := h.writeLock(append(kept, e)); err != nil {
		return Entry{}, err
	}
	h.log.Info("installed plugin", "name", e.Name, "version", e.Version, "sha256", e.SHA256)
	return e, nil
}

// Remove uninstalls a plugin.
func (h *Host) Remove(name string) error {
	e, err := h.lookup(name)
	if err != nil {
		return err
	}
	h.stop(name)
	entries, err := h.readLock()
	if err != nil {
		return err
	}
	kept := entries[:0]
	for _, old := range entries {
		if old.Name != name {
			kept = append(kept, old)
		}
	}
	if err := h.writeLock(kept); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(h.dir, e.File)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove plugin %s: %w", name, err)
	}
	return nil
}

// Describe asks an installed plugin to describe itself.
func (h *Host) Describe(ctx context.Context, name string) (*sdk.Description, error) {
	var out *sdk.Description
	err := h.call(ctx, name, "Describe", func(ctx context.Context, p sdk.Planner) error {
		d, err := p.Describe(ctx)
		out = d
		return err
	})
	return out, err
}

// Plan asks an installed plugin for a patch plan.
func (h *Host) Plan(ctx context.Context, name string, req *sdk.PlanRequest) (*sdk.Plan, error) {
	var out *sdk.Plan
	err := h.call(ctx, name, "Plan", func(ctx context.Context, p sdk.Planner) error {
		r, err := p.Plan(ctx, req)
		out = r
		return err
	})
	return out, err
}

// CallError is a failed plugin call. Code says what kind of failure it
// was, so that callers map codes, never text: the plugin's own code for an
// error it returned (sdk.InvalidArgument for bad input), Unavailable when
// the plugin crashed or could not start, DeadlineExceeded when it hung,
// NotFound when it is not installed, PermissionDenied when its binary
// changed since it was installed.
type CallError struct {
	Plugin string
	Call   string // Describe, Plan, start
	Code   sdk.Code
	Msg    string
}

func (e *CallError) Error() string { return e.Msg }

// GRPCStatus gives the error's code to sdk.CodeOf and status.Code.
func (e *CallError) GRPCStatus() *status.Status { return status.New(e.Code, e.Msg) }

func callErrorf(name, call string, code sdk.Code, format string, args ...any) *CallError {
	return &CallError{Plugin: name, Call: call, Code: code, Msg: fmt.Sprintf(format, args...)}
}

// call runs one request on a plugin, starting it if needed, under the call
// timeout. If the plugin process died or hung, it is stopped so the next
// call starts a fresh one, and the error says so.
func (h *Host) call(ctx context.Context, name, what string, f func(context.Context, sdk.Planner) error) error {
	r, err := h.get(ctx, name)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, h.opts.CallTimeout)
	defer cancel()
	err = f(ctx, r.planner)
	if err == nil {
		return nil
	}
	st, _ := status.FromError(err)
	if st.Code() == codes.Unavailable {
		// The connection broke: the process is dying or dead. gRPC can
		// report it before go-plugin notices the exit, so give it a moment.
		for deadline := time.Now().Add(time.Second); !r.client.Exited() && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		h.stop(name)
		return callErrorf(name, what, codes.Unavailable, "plugin %s crashed during %s (it will be restarted on the next call): %s", name, what, st.Message())
	}
	switch {
	case r.client.Exited():
		h.stop(name)
		return callErrorf(name, what, codes.Unavailable, "plugin %s crashed during %s (it will be restarted on the next call): %s", name, what, st.Message())
	case errors.Is(ctx.Err(), context.DeadlineExceeded) || st.Code() == codes.DeadlineExceeded:
		h.stop(name)
		return callErrorf(name, what, codes.DeadlineExceeded, "plugin %s did not answer %s within %v; it was stopped and will be restarted on the next call", name, what, h.opts.CallTimeout)
	}
	return callErrorf(name, what, st.Code(), "plugin %s: %s: %s", name, what, st.Message())
}

// get returns a running plugin, (re)starting it if it is not running.
func (h *Host) get(ctx context.Context, name string) (*running, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, errors.New("plugin host is closed")
	}
	if r, ok := h.running[name]; ok && !r.client.Exited() {
		if time.Since(r.lastUsed) < idleCheck || r.rpc.Ping() == nil {
			r.lastUsed = time.Now()
			return r, nil
		}
		h.log.Warn("plugin failed its health check; restarting it", "name", name)
		r.kill()
		delete(h.running, name)
	}
	e, err := h.lookup(name)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(h.dir, e.File)
	if err := h.Verify(e); err != nil {
		return nil, callErrorf(name, "start", codes.PermissionDenied, "plugin %s refused: %v; reinstall it if the change is intended", name, err)
	}
	r, err := h.launch(path, e.SHA256, name)
	if err != nil {
		return nil, &CallError{Plugin: name, Call: "start", Code: codes.Unavailable, Msg: err.Error()}
	}
	r.entry = e
	r.lastUsed = time.Now()
	h.running[name] = r
	h.started[name]++
	return r, nil
}

// Restarts counts, per plugin, the launches after its first: each follows
// a crash, a hang or a failed health check.
func (h *Host) Restarts() map[string]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]int{}
	for name, n := range h.started {
		out[name] = max(n-1, 0)
	}
	return out
}

// launch starts a plugin binary whose sha256 go-plugin checks again just
// before exec.
func (h *Host) launch(path, sum, name string) (*running, error) {
	want, err := hex.DecodeString(sum)
	if err != nil {
		return nil, fmt.Errorf("plugin %s: bad checksum %q in lockfile", name, sum)
	}
	cmd := exec.Command(path)
	// The plugin dies with the host, even if the host is killed; it runs
	// in a process group of its own, so that stopping it stops whatever it
	// started too (a child holding its output pipes open would otherwise
	// outlive it and keep go-plugin waiting).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		VersionedPlugins: map[int]plugin.PluginSet{sdk.ProtocolVersion: {sdk.PluginName: &sdk.GRPCPlugin{}}},
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         true,
		SecureConfig:     &plugin.SecureConfig{Checksum: want, Hash: sha256.New()},
		StartTimeout:     h.opts.StartTimeout,
		Logger:           h.log.Named(name),
		SkipHostEnv:      true,
	})
	r := &running{cmd: cmd, client: client}
	rpc, err := client.Client()
	if err != nil {
		r.kill()
		return nil, fmt.Errorf("plugin %s: start: %w", name, err)
	}
	raw, err := rpc.Dispense(sdk.PluginName)
	if err != nil {
		r.kill()
		return nil, fmt.Errorf("plugin %s: %w", name, err)
	}
	planner, ok := raw.(sdk.Planner)
	if !ok {
		r.kill()
		return nil, fmt.Errorf("plugin %s does not serve the planner interface", name)
	}
	h.log.Debug("started plugin", "name", name, "protocol", client.NegotiatedVersion())
	r.rpc, r.planner = rpc, planner
	return r, nil
}

// kill stops a plugin: its whole process group first (children it
// started included), then go-plugin's client, which waits for the output
// pipes to close.
func (r *running) kill() {
	if r.cmd.Process != nil {
		syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL) // the group: pgid = pid
	}
	r.client.Kill()
}

// describeBinary launches a binary that is not installed yet, once.
func (h *Host) describeBinary(ctx context.Context, path, sum string) (*sdk.Description, error) {
	r, err := h.launch(path, sum, "install")
	if err != nil {
		return nil, err
	}
	defer r.kill()
	ctx, cancel := context.WithTimeout(ctx, h.opts.CallTimeout)
	defer cancel()
	return r.planner.Describe(ctx)
}

func (h *Host) stop(name string) {
	h.mu.Lock()
	r := h.running[name]
	delete(h.running, name)
	h.mu.Unlock()
	if r != nil {
		r.kill()
	}
}

// Close stops every plugin.
func (h *Host) Close() {
	h.mu.Lock()
	h.closed = true
	rs := h.running
	h.running = map[string]*running{}
	h.mu.Unlock()
	for _, r := range rs {
		r.kill()
	}
}

// PID is the process id of a running plugin (0 if not running), for
// supervision tests and diagnostics.
func (h *Host) PID(name string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if r, ok := h.running[name]; ok && !r.client.Exited() {
		if rc := r.client.ReattachConfig(); rc != nil {
			return rc.Pid
		}
	}
	return 0
}

// FileSHA256 is the hex sha256 of a file's contents.
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// copyInto copies the file at src into w.
func copyInto(w io.Writer, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	_, err = io.Copy(w, in)
	return err
}
