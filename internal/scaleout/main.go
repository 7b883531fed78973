// Command scaleout is `make scaleout`: three refinersd replicas over one
// S3 store (versitygw on loopback), behind HAProxy configured by
// deploy/haproxy.cfg, under a bounded load of several adapter sets. It
// measures adapter swaps with and without hashing on the adapter-set
// header, then kills one replica and drains another mid-load, and checks
// that no request was lost or answered wrong (outputs compared bit for bit
// with a single daemon's). It prints a table and exits 1 on any wrong or
// lost answer.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/daemon"
	"github.com/refiners-go/refiners/internal/s3test"
)

func main() {
	keep := flag.Bool("keep", false, "keep the work folder (logs, stores, caches)")
	perPhase := flag.Int("requests", 180, "requests per phase")
	clients := flag.Int("clients", 6, "concurrent clients")
	flag.Parse()
	if err := run(*perPhase, *clients, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "scaleout:", err)
		os.Exit(1)
	}
}

// The tiny CLIP text encoder of the conformance cases.
var clipSets = []string{"--set", "embedding_dim=32", "--set", "max_sequence_length=16", "--set", "vocabulary_size=100",
	"--set", "num_layers=2", "--set", "num_attention_heads=4", "--set", "feedforward_dim=128"}

const (
	clipCase = "conformance/testdata/specs/clip_text_tiny.safetensors"
	storeURL = "s3://refiners/prod"
)

// adapterSet is one of the load's adapter sets, with the output a single
// daemon gave for it.
type adapterSet struct {
	name     string
	adapters []daemon.AdapterRequest
	want     string // output.0, base64
}

func scale(v float64) *float64 { return &v }

func adapterSets() []*adapterSet {
	lora := func(file string, s float64) daemon.AdapterRequest {
		return daemon.AdapterRequest{Plugin: "lora", File: file, Scale: scale(s)}
	}
	return []*adapterSet{
		{name: "a@0.3", adapters: []daemon.AdapterRequest{lora("lora-a", 0.3)}},
		{name: "a@0.7", adapters: []daemon.AdapterRequest{lora("lora-a", 0.7)}},
		{name: "a@1", adapters: []daemon.AdapterRequest{lora("lora-a", 1)}},
		{name: "b@0.5", adapters: []daemon.AdapterRequest{lora("lora-b", 0.5)}},
		{name: "b@1", adapters: []daemon.AdapterRequest{lora("lora-b", 1)}},
		{name: "a@0.5+b@0.5", adapters: []daemon.AdapterRequest{lora("lora-a", 0.5), lora("lora-b", 0.5)}},
	}
}

type env struct {
	root, work string
	bin        string
	vars       []string // environment of every process: the S3 settings
	inputs     []byte   // the run's inputs, a safetensors file
	procs      []*proc
}

func run(perPhase, clients int, keep bool) error {
	root, err := s3test.RepoRoot()
	if err != nil {
		return err
	}
	if _, err := exec.LookPath("haproxy"); err != nil {
		return errors.New("haproxy is not installed: run scripts/setup-haproxy.sh (make scaleout does)")
	}
	work, err := os.MkdirTemp("", "refiners-scaleout-")
	if err != nil {
		return err
	}
	e := &env{root: root, work: work, bin: filepath.Join(work, "refinersd")}
	defer func() {
		for _, p := range e.procs {
			p.kill()
		}
		if keep {
			fmt.Println("work folder kept:", work)
		} else {
			os.RemoveAll(work)
		}
	}()
	start := time.Now()
	step := func(format string, args ...any) {
		fmt.Printf("[%5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}

	step("building refinersd and the lora plugin")
	for out, pkg := range map[string]string{"refinersd": "./cmd/refinersd", "lora": "./plugins/lora"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(work, out), pkg)
		cmd.Dir = root
		if msg, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %v\n%s", pkg, err, msg)
		}
	}
	step("starting versitygw (built once by scripts/build-versitygw.sh)")
	s3, err := s3test.Start(filepath.Join(work, "s3"))
	if err != nil {
		return err
	}
	e.procs = append(e.procs, &proc{name: "versitygw", stop: s3.Stop})
	if err := s3.MakeBucket("refiners"); err != nil {
		return err
	}
	for k, v := range s3.Env() {
		e.vars = append(e.vars, k+"="+v)
	}
	// The CLI's blob cache (for `models add`) stays in the work folder.
	e.vars = append(e.vars, "XDG_CACHE_HOME="+filepath.Join(work, "cli-cache"))

	step("filling the S3 store: a tiny CLIP text encoder, two LoRAs")
	if err := e.fillStore(); err != nil {
		return err
	}
	sets := adapterSets()

	step("reference: one daemon answers each adapter set once")
	ref, err := e.startReplica("ref")
	if err != nil {
		return err
	}
	for _, s := range sets {
		r := e.send(ref.url, s, true)
		if r.code != 200 {
			return fmt.Errorf("reference run %s: %d %s", s.name, r.code, r.err)
		}
		s.want = r.output
	}
	for i, a := range sets {
		for _, b := range sets[:i] {
			if a.want == b.want {
				return fmt.Errorf("adapter sets %s and %s give the same output: the check would prove nothing", a.name, b.name)
			}
		}
	}
	ref.kill()

	step("starting 3 replicas (each with its own blob cache) and HAProxy")
	var replicas []*proc
	for i := 1; i <= 3; i++ {
		p, err := e.startReplica(fmt.Sprintf("r%d", i))
		if err != nil {
			return err
		}
		replicas = append(replicas, p)
	}
	lb, err := e.startHAProxy(replicas)
	if err != nil {
		return err
	}
	if err := lb.waitStatus(replicas, "UP", 30*time.Second); err != nil {
		return err
	}

	var rows []phaseResult
	step("phase 1: %d requests hashed on %s", perPhase, daemon.AdapterSetHeader)
	hashed := e.phase("hashed", lb.url, sets, perPhase, clients, true, 1, nil)
	rows = append(rows, hashed)
	step("phase 2: %d requests without the header (round-robin)", perPhase)
	rows = append(rows, e.phase("round-robin", lb.url, sets, perPhase, clients, false, 2, nil))

	// Phase 3: kill one replica, drain another, mid-load.
	victim, drained := replicas[1], replicas[2]
	victimSets := map[string]bool{}
	for set, replica := range hashed.owner {
		if replica == victim.name {
			victimSets[set] = true
		}
	}
	var ev failoverEvents
	type down struct {
		after time.Duration
		err   error
	}
	downc := make(chan down, 1)
	n := perPhase * 4 / 3
	step("phase 3: %d hashed requests; %s killed (SIGKILL) after %d answers, %s drained after %d", n, victim.name, n/4, drained.name, n/2)
	hooks := map[int]func(){
		n / 4: func() {
			ev.killAt = time.Now()
			victim.kill()
			go func() {
				after, err := lb.waitDown(victim.name, time.Now())
				downc <- down{after, err}
			}()
		},
		n / 2: func() {
			// Asynchronous jobs, one per set, taken just before the drain:
			// their follow-ups must reach the replica that took them, even
			// once HAProxy has taken it out.
			for _, s := range sets {
				ev.jobs = append(ev.jobs, e.submit(lb.url, s))
			}
			ev.drainAt = time.Now()
			st, err := postDrain(drained.url)
			ev.drainStatus, ev.drainErr = st, err
		},
	}
	failover := e.phase("kill+drain", lb.url, sets, n, clients, true, 3, hooks)
	rows = append(rows, failover)
	if ev.killAt.IsZero() {
		return errors.New("phase 3 ended before the kill")
	}
	d := <-downc
	ev.downAfter, ev.downErr = d.after, d.err
	for _, o := range failover.outcomes {
		if o.start.After(ev.killAt) && victimSets[o.set] && o.code == 200 && (ev.firstAnswer.IsZero() || o.end.Before(ev.firstAnswer)) {
			ev.firstAnswer = o.end
		}
	}
	step("fetching the asynchronous jobs through HAProxy once %s is out of it", drained.name)
	var asyncErrs []string
	if _, err := lb.waitDown(drained.name, time.Now()); err != nil {
		asyncErrs = append(asyncErrs, err.Error())
	}
	onDrained := 0
	for _, j := range ev.jobs {
		if j.replica == drained.name {
			onDrained++
		}
		if err := e.fetchJob(lb.url, j); err != nil {
			asyncErrs = append(asyncErrs, err.Error())
		}
	}
	refused503, _ := metric(drained.url, `refinersd_http_requests_total{code="503",route="/v1/run"}`)
	drainedDone, _ := metric(drained.url, `refinersd_jobs_total{state="done"}`)
	step("SIGTERM to the drained replica")
	exitErr := drained.terminate(30 * time.Second)

	// The table.
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\tsent\tanswered\twrong\tlost\tswaps/100 req\tp50 ms\tp95 ms\tmax ms\tserved by\t")
	bad := 0
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t%s\t\n", r.name, r.sent, r.answered, r.wrong, r.lost,
			100*float64(r.swaps)/float64(max(r.answered, 1)), r.pct(0.5), r.pct(0.95), r.pct(1), r.servedBy())
		bad += r.wrong + r.lost
	}
	tw.Flush()
	fmt.Println()
	fmt.Printf("adapter sets: %d; clients: %d; replicas: 3 (S3 store %s on versitygw, per-replica blob cache)\n", len(sets), clients, storeURL)
	fmt.Printf("hashing: adapter sets of the killed replica %s: %s\n", victim.name, strings.Join(sortedKeys(victimSets), ", "))
	if !ev.firstAnswer.IsZero() {
		fmt.Printf("recovery after the kill: first answer for %s's adapter sets %.0f ms after the kill (HAProxy retried elsewhere)\n", victim.name, ev.firstAnswer.Sub(ev.killAt).Seconds()*1000)
	} else {
		fmt.Printf("recovery after the kill: no request for %s's adapter sets came after the kill\n", victim.name)
	}
	if ev.downErr != nil {
		fmt.Printf("health check: %v\n", ev.downErr)
		bad++
	} else {
		fmt.Printf("health check: %s marked DOWN %.1f s after the kill (checks every 1 s, 250 ms after an error; fall 2)\n", victim.name, ev.downAfter.Seconds())
	}
	if ev.drainErr != nil {
		fmt.Printf("drain: %v\n", ev.drainErr)
		bad++
	} else {
		fmt.Printf("drain: %s had %d queued and %d running jobs at the drain; it answered %.0f runs with 503 (retried elsewhere by HAProxy) and finished %.0f jobs since it started\n",
			drained.name, ev.drainStatus.Queued, ev.drainStatus.Running, refused503, drainedDone)
	}
	if len(asyncErrs) > 0 {
		fmt.Printf("async jobs: %d submitted before the drain; failures:\n  %s\n", len(ev.jobs), strings.Join(asyncErrs, "\n  "))
		bad += len(asyncErrs)
	} else {
		fmt.Printf("async jobs: %d submitted just before the drain (%d taken by %s); all fetched through HAProxy after it marked %s DOWN, each from the replica that took it, outputs right\n",
			len(ev.jobs), onDrained, drained.name, drained.name)
	}
	if exitErr != nil {
		fmt.Printf("SIGTERM: %s: %v\n", drained.name, exitErr)
		bad++
	} else {
		fmt.Printf("SIGTERM: %s exited cleanly\n", drained.name)
	}
	if hashed.swaps >= rows[1].swaps {
		fmt.Printf("note: hashing did not save swaps this run (%d vs %d)\n", hashed.swaps, rows[1].swaps)
	}
	step("done")
	if bad > 0 {
		return fmt.Errorf("%d requests lost or answered wrong, or a failover step failed (logs: rerun with -keep)", bad)
	}
	return nil
}

func sortedKeys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// fillStore adds the model and two LoRAs to the S3 store with the CLI,
// installs the lora plugin and writes the run's inputs.
func (e *env) fillStore() error {
	if _, err := e.cli("plugins", "install", filepath.Join(e.work, "lora"), "--dir", filepath.Join(e.work, "plugins")); err != nil {
		return err
	}
	args := append([]string{"models", "add", "clip", "--spec", filepath.Join(e.root, "specs/clip_text.yaml"), "--weights", filepath.Join(e.root, clipCase),
		"--prefix", "param.", "--store", storeURL}, clipSets...)
	if _, err := e.cli(args...); err != nil {
		return err
	}
	err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
		src, err := weights.Open(filepath.Join(e.root, clipCase))
		if err != nil {
			return err
		}
		defer src.Close()
		in := map[string]*tensor.Tensor{}
		for _, k := range src.Keys() {
			if strings.HasPrefix(k, "input.") || strings.HasPrefix(k, "context.") {
				in[k] = src.Load(s, k)
			}
		}
		inputs := filepath.Join(e.work, "inputs.safetensors")
		if err := weights.Save(s, inputs, in, nil); err != nil {
			return err
		}
		if e.inputs, err = os.ReadFile(inputs); err != nil {
			return err
		}
		// Refiners-layout LoRAs (rank 4) on the feed-forward Linears of
		// the first (lora-a) and second (lora-b) transformer layers,
		// scaled up so that they matter.
		for n, layer := range map[string]int64{"lora-a": 1, "lora-b": 2} {
			seed := 10 * layer
			lora := map[string]*tensor.Tensor{}
			for i, shape := range [][2]int64{{128, 32}, {32, 128}} {
				down, up := core.NewParameter(4, shape[1]), core.NewParameter(shape[0], 4)
				if err := core.InitRandom(s, down, seed+int64(i)); err != nil {
					return err
				}
				if err := core.InitRandom(s, up, seed+10+int64(i)); err != nil {
					return err
				}
				key := fmt.Sprintf("CLIPTextEncoder.TransformerLayer_%d.Residual_2.FeedForward.%d.Linear", layer, i+1)
				lora[key+".down.weight"], lora[key+".up.weight"] = down.Weight, s.Scale(up.Weight, 3)
			}
			p := filepath.Join(e.work, n+".safetensors")
			if err := weights.Save(s, p, lora, nil); err != nil {
				return err
			}
			if _, err := e.cli("adapters", "add", n, p, "--store", storeURL); err != nil {
				return err
			}
		}
		return nil
	})
	return err
}

func (e *env) cli(args ...string) (string, error) {
	cmd := exec.Command(e.bin, args...)
	cmd.Env = append(os.Environ(), e.vars...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("refinersd %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// proc is a process the harness started.
type proc struct {
	name, url string
	cmd       *exec.Cmd
	done      chan error
	log       *os.File
	stop      func()
	once      sync.Once
}

func (p *proc) kill() {
	p.once.Do(func() {
		if p.stop != nil {
			p.stop()
			return
		}
		p.cmd.Process.Kill()
		<-p.done
	})
}

// terminate sends SIGTERM and waits for a clean exit.
func (p *proc) terminate(timeout time.Duration) error {
	var err error
	p.once.Do(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err = <-p.done:
		case <-time.After(timeout):
			p.cmd.Process.Kill()
			<-p.done
			err = fmt.Errorf("still running %v after SIGTERM", timeout)
		}
	})
	return err
}

// startReplica runs `refinersd serve` on the S3 store with a cache of its
// own, preloading the model, and waits until /readyz answers 200.
func (e *env) startReplica(name string) (*proc, error) {
	logf, err := os.Create(filepath.Join(e.work, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(e.bin, "serve", "--addr", "127.0.0.1:0", "--store", storeURL, "--plugins-dir", filepath.Join(e.work, "plugins"),
		"--cache-dir", filepath.Join(e.work, "cache-"+name), "--replica", name, "--preload", "clip", "--shutdown-timeout", "20s")
	cmd.Env = append(os.Environ(), e.vars...)
	cmd.Stderr = logf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{name: name, cmd: cmd, done: make(chan error, 1), log: logf}
	e.procs = append(e.procs, p)
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		return nil, fmt.Errorf("replica %s did not start: %v (log %s)", name, err, logf.Name())
	}
	go func() { io.Copy(io.Discard, stdout); p.done <- cmd.Wait() }()
	p.url = strings.TrimSpace(strings.TrimPrefix(line, "refinersd listening on "))
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get(p.url + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("replica %s not ready after 60 s (log %s)", name, logf.Name())
		}
	}
}

type haproxy struct {
	url, stats string
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startHAProxy runs HAProxy on deploy/haproxy.cfg as shipped, plus a
// stats page for the harness to read server states from.
func (e *env) startHAProxy(replicas []*proc) (*haproxy, error) {
	bind, err := freeAddr()
	if err != nil {
		return nil, err
	}
	stats, err := freeAddr()
	if err != nil {
		return nil, err
	}
	statsCfg := filepath.Join(e.work, "stats.cfg")
	if err := os.WriteFile(statsCfg, []byte("frontend stats\n    bind "+stats+"\n    stats enable\n    stats uri /stats\n    stats refresh 1s\n"), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(e.work, "haproxy.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("haproxy", "-db", "-f", filepath.Join(e.root, "deploy", "haproxy.cfg"), "-f", statsCfg)
	cmd.Env = append(os.Environ(), "REFINERS_LB_BIND="+bind)
	for i, r := range replicas {
		cmd.Env = append(cmd.Env, fmt.Sprintf("REFINERSD_%d=%s", i+1, strings.TrimPrefix(r.url, "http://")))
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{name: "haproxy", cmd: cmd, done: make(chan error, 1), log: logf}
	go func() { p.done <- cmd.Wait() }()
	e.procs = append(e.procs, p)
	return &haproxy{url: "http://" + bind, stats: "http://" + stats + "/stats;csv"}, nil
}

// states reads the backend's server states (UP, DOWN, ...) from the stats page.
func (h *haproxy) states() (map[string]string, error) {
	resp, err := http.Get(h.stats)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	recs, err := csv.NewReader(bytes.NewReader(bytes.TrimPrefix(b, []byte("# ")))).ReadAll()
	if err != nil || len(recs) == 0 {
		return nil, fmt.Errorf("haproxy stats: %v", err)
	}
	col := map[string]int{}
	for i, h := range recs[0] {
		col[h] = i
	}
	out := map[string]string{}
	for _, r := range recs[1:] {
		if len(r) > col["status"] && r[col["pxname"]] == "refinersd" && r[col["svname"]] != "BACKEND" {
			out[r[col["svname"]]] = strings.Fields(r[col["status"]] + " ")[0]
		}
	}
	return out, nil
}

func (h *haproxy) waitStatus(replicas []*proc, want string, timeout time.Duration) error {
	var st map[string]string
	var err error
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if st, err = h.states(); err == nil && len(st) == len(replicas) {
			ok := true
			for _, r := range replicas {
				ok = ok && st[r.name] == want
			}
			if ok {
				return nil
			}
		}
	}
	return fmt.Errorf("haproxy: servers not all %s after %v: %v %v", want, timeout, st, err)
}

// waitDown polls until HAProxy marks a server DOWN, and says how long
// after since that took.
func (h *haproxy) waitDown(name string, since time.Time) (time.Duration, error) {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if st, err := h.states(); err == nil && st[name] == "DOWN" {
			return time.Since(since), nil
		}
	}
	return 0, fmt.Errorf("haproxy never marked %s DOWN", name)
}

// outcome is one request's fate.
type outcome struct {
	set        string
	code       int
	replica    string
	swapped    bool
	output     string
	err        string
	start, end time.Time
}

// body is a run request of set s: the JSON request and the inputs file.
func (e *env) body(s *adapterSet) (io.Reader, string) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	rj, _ := json.Marshal(daemon.RunRequest{Model: "clip", Adapters: s.adapters, Outputs: "base64"})
	mw.WriteField("request", string(rj))
	part, _ := mw.CreateFormFile("inputs", "inputs.safetensors")
	part.Write(e.inputs)
	mw.Close()
	return &buf, mw.FormDataContentType()
}

// send runs one request of set s against url.
func (e *env) send(url string, s *adapterSet, header bool) outcome {
	o := outcome{set: s.name, start: time.Now()}
	body, ct := e.body(s)
	req, _ := http.NewRequest("POST", url+"/v1/run", body)
	req.Header.Set("Content-Type", ct)
	if header {
		req.Header.Set(daemon.AdapterSetHeader, daemon.AdapterSetDigest("clip", s.adapters, false))
	}
	resp, err := client.Do(req)
	if err != nil {
		o.err = err.Error()
		o.end = time.Now()
		return o
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	o.code, o.replica, o.end = resp.StatusCode, resp.Header.Get(daemon.ReplicaHeader), time.Now()
	if resp.StatusCode != 200 {
		o.err = strings.TrimSpace(string(b))
		return o
	}
	var rr struct {
		Outputs map[string]struct {
			DataBase64 string `json:"data_base64"`
		}
		Adapters []daemon.AdapterReport
	}
	if err := json.Unmarshal(b, &rr); err != nil {
		o.err = err.Error()
		return o
	}
	o.output = rr.Outputs["output.0"].DataBase64
	for _, a := range rr.Adapters {
		o.swapped = o.swapped || !a.Reused
	}
	return o
}

var client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 2 * time.Minute}

type phaseResult struct {
	name                               string
	sent, answered, wrong, lost, swaps int
	latencies                          []time.Duration
	byReplica                          map[string]int
	owner                              map[string]string // adapter set -> the replica that served it most
	outcomes                           []outcome
	firstErr                           string
}

func (r phaseResult) pct(p float64) float64 {
	if len(r.latencies) == 0 {
		return 0
	}
	i := min(int(p*float64(len(r.latencies))), len(r.latencies)-1)
	return r.latencies[i].Seconds() * 1000
}

func (r phaseResult) servedBy() string {
	var parts []string
	for _, k := range sortedKeys(boolKeys(r.byReplica)) {
		parts = append(parts, fmt.Sprintf("%s:%d", k, r.byReplica[k]))
	}
	return strings.Join(parts, " ")
}

func boolKeys(m map[string]int) map[string]bool {
	out := map[string]bool{}
	for k := range m {
		out[k] = true
	}
	return out
}

// phase sends n requests (sets drawn with a fixed seed) from clients
// goroutines; hooks[k] runs once when k answers are in.
func (e *env) phase(name, url string, sets []*adapterSet, n, clients int, header bool, seed uint64, hooks map[int]func()) phaseResult {
	rng := rand.New(rand.NewPCG(seed, 42))
	order := make([]*adapterSet, n)
	for i := range order {
		order[i] = sets[rng.IntN(len(sets))]
	}
	next := make(chan *adapterSet)
	go func() {
		for _, s := range order {
			next <- s
		}
		close(next)
	}()
	var mu sync.Mutex
	var outs []outcome
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for s := range next {
				o := e.send(url, s, header)
				if o.code == 200 && o.output != s.want {
					o.err = "wrong output"
				}
				mu.Lock()
				outs = append(outs, o)
				hook := hooks[len(outs)]
				mu.Unlock()
				if hook != nil {
					hook()
				}
			}
		})
	}
	wg.Wait()
	r := phaseResult{name: name, sent: n, byReplica: map[string]int{}, owner: map[string]string{}, outcomes: outs}
	counts := map[string]map[string]int{}
	for _, o := range outs {
		switch {
		case o.code == 200 && o.err == "":
			r.answered++
			r.latencies = append(r.latencies, o.end.Sub(o.start))
			r.byReplica[o.replica]++
			if o.swapped {
				r.swaps++
			}
			if counts[o.set] == nil {
				counts[o.set] = map[string]int{}
			}
			counts[o.set][o.replica]++
		case o.code == 200:
			r.wrong++
		default:
			r.lost++
			if r.firstErr == "" {
				r.firstErr = fmt.Sprintf("%d %s", o.code, o.err)
				fmt.Printf("  first lost request (%s): %s\n", o.set, r.firstErr)
			}
		}
	}
	for set, by := range counts {
		best := ""
		for rep, c := range by {
			if best == "" || c > by[best] {
				best = rep
			}
		}
		r.owner[set] = best
	}
	slices.Sort(r.latencies)
	return r
}

// asyncJob is a job submitted through HAProxy.
type asyncJob struct {
	set     *adapterSet
	id      string
	replica string // that took it
	err     error
}

// submit posts an asynchronous job of set s, with the routing header.
func (e *env) submit(url string, s *adapterSet) asyncJob {
	j := asyncJob{set: s}
	body, ct := e.body(s)
	req, _ := http.NewRequest("POST", url+"/v1/jobs", body)
	req.Header.Set("Content-Type", ct)
	req.Header.Set(daemon.AdapterSetHeader, daemon.AdapterSetDigest("clip", s.adapters, false))
	resp, err := client.Do(req)
	if err != nil {
		j.err = err
		return j
	}
	defer resp.Body.Close()
	var st daemon.JobStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || resp.StatusCode != http.StatusAccepted {
		j.err = fmt.Errorf("submit %s: %s %v", s.name, resp.Status, err)
		return j
	}
	j.id, j.replica = st.ID, resp.Header.Get(daemon.ReplicaHeader)
	return j
}

// fetchJob polls a job through HAProxy without the routing header (the
// stick table must find its replica) and checks its result.
func (e *env) fetchJob(url string, j asyncJob) error {
	if j.err != nil {
		return j.err
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := client.Get(url + "/v1/jobs/" + j.id + "/result?outputs=base64")
		if err != nil {
			return fmt.Errorf("job %s (%s, on %s): %v", j.id, j.set.name, j.replica, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if by := resp.Header.Get(daemon.ReplicaHeader); by != j.replica {
			return fmt.Errorf("job %s (%s): taken by %s, its result asked of %s (%d %s)", j.id, j.set.name, j.replica, by, resp.StatusCode, bytes.TrimSpace(b))
		}
		if resp.StatusCode == http.StatusConflict && time.Now().Before(deadline) {
			continue // not ended yet
		}
		if resp.StatusCode != 200 {
			return fmt.Errorf("job %s (%s, on %s): %d %s", j.id, j.set.name, j.replica, resp.StatusCode, bytes.TrimSpace(b))
		}
		var rr struct {
			Outputs map[string]struct {
				DataBase64 string `json:"data_base64"`
			}
		}
		if err := json.Unmarshal(b, &rr); err != nil || rr.Outputs["output.0"].DataBase64 != j.set.want {
			return fmt.Errorf("job %s (%s, on %s): wrong output (%v)", j.id, j.set.name, j.replica, err)
		}
		return nil
	}
}

type failoverEvents struct {
	jobs                         []asyncJob
	killAt, drainAt, firstAnswer time.Time
	downAfter                    time.Duration
	downErr, drainErr            error
	drainStatus                  daemon.DrainStatus
}

func postDrain(url string) (daemon.DrainStatus, error) {
	var st daemon.DrainStatus
	resp, err := http.Post(url+"/v1/admin/drain", "application/json", nil)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return st, fmt.Errorf("POST /v1/admin/drain: %s", resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// metric reads one sample from a replica's /metrics.
func metric(url, name string) (float64, error) {
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			var v float64
			_, err := fmt.Sscan(rest, &v)
			return v, err
		}
	}
	return 0, nil
}
