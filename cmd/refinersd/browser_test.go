package main

// Browser tests: the web page (daemon/web) in headless Chromium, driven
// with chromedp, against a real `refinersd serve`.
//
// Chromium is Debian's `chromium` package (scripts/setup-browser.sh
// installs it; REFINERS_CHROMIUM names another binary). When it is
// missing these tests skip with a message, unless REFINERS_BROWSER_TESTS=1
// (what `make test` sets), where they fail: CI must not pass without them.
//
// Every step saves a screenshot under $REFINERS_SCREENSHOTS, by default
// test-output/browser/<test>/ at the repository root, for review.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	"gopkg.in/yaml.v3"

	"github.com/refiners-go/refiners/core/weights"
)

const browserTestsEnv = "REFINERS_BROWSER_TESTS"

// chromiumPath finds the browser: $REFINERS_CHROMIUM, else the usual names
// on $PATH.
func chromiumPath() (string, error) {
	if p := os.Getenv("REFINERS_CHROMIUM"); p != "" {
		if _, err := exec.LookPath(p); err != nil {
			return "", fmt.Errorf("REFINERS_CHROMIUM=%s: %w", p, err)
		}
		return p, nil
	}
	names := []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"}
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no Chromium on $PATH (looked for %s)", strings.Join(names, ", "))
}

// needChromium returns the browser binary, or skips (or, under
// REFINERS_BROWSER_TESTS=1, fails) the test with a message saying how to
// get it.
func needChromium(t *testing.T) string {
	t.Helper()
	p, err := chromiumPath()
	if err == nil {
		return p
	}
	msg := fmt.Sprintf("browser tests: %v. Install it with scripts/setup-browser.sh (Debian: apt-get install -y chromium) or set REFINERS_CHROMIUM", err)
	if os.Getenv(browserTestsEnv) == "1" {
		t.Fatalf("%s; %s=1 requires the browser tests to run", msg, browserTestsEnv)
	}
	t.Skipf("%s; set %s=1 to make this a failure", msg, browserTestsEnv)
	return ""
}

// screenshotDir is where a test's screenshots go; it starts empty.
func screenshotDir(t *testing.T) string {
	t.Helper()
	root := os.Getenv("REFINERS_SCREENSHOTS")
	if root == "" {
		root = filepath.Join("..", "..", "test-output", "browser")
	}
	dir := filepath.Join(root, strings.ReplaceAll(t.Name(), "/", "_"))
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// browser is one headless Chromium tab.
type browser struct {
	t     *testing.T
	ctx   context.Context
	shots string
	n     int

	mu       sync.Mutex
	jsErrors []string // uncaught exceptions and console.error calls
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	exe := needChromium(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.NoSandbox, // tests may run as root, where Chromium's sandbox refuses to start
		chromedp.WindowSize(1280, 900),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	b := &browser{t: t, ctx: ctx, shots: screenshotDir(t)}
	err := chromedp.Listen(ctx, func(ev any) {
		var msg string
		switch ev := ev.(type) {
		case *runtime.EventExceptionThrown:
			msg = ev.ExceptionDetails.Text
			if ev.ExceptionDetails.Exception != nil {
				msg += " " + ev.ExceptionDetails.Exception.Description
			}
		case *runtime.EventConsoleAPICalled:
			if ev.Type != runtime.ConsoleAPICalledTypeError {
				return
			}
			for _, a := range ev.Args {
				msg += " " + string(a.Value) + a.Description
			}
		default:
			return
		}
		b.mu.Lock()
		b.jsErrors = append(b.jsErrors, msg)
		b.mu.Unlock()
	})
	if err != nil {
		t.Fatalf("start Chromium (%s): %v", exe, err)
	}
	t.Cleanup(func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, e := range b.jsErrors {
			t.Errorf("JavaScript error in the page: %s", e)
		}
	})
	return b
}

// do runs actions with a time limit, failing the test with what was being
// done.
func (b *browser) do(what string, limit time.Duration, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, limit)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.shot("failed")
		b.t.Fatalf("%s: %v", what, err)
	}
}

// wait polls a JavaScript condition until it holds.
func (b *browser) wait(what, cond string, limit time.Duration) {
	b.t.Helper()
	b.do("wait for "+what, limit+time.Second, chromedp.Poll[chromedp.Void](cond,
		chromedp.WithPollingTimeout(limit), chromedp.WithPollingInterval(20*time.Millisecond)))
}

// eval returns a JavaScript expression's value.
func eval[T any](b *browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// shot saves a full-page screenshot as NN-name.png.
func (b *browser) shot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
		return
	}
	b.n++
	path := filepath.Join(b.shots, fmt.Sprintf("%02d-%s.png", b.n, name))
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// clickXY clicks at a point of an element, given as fractions of its
// width and height.
func (b *browser) clickXY(sel string, fx, fy float64, mods ...chromedp.Modifier) {
	b.t.Helper()
	r := eval[[]float64](b, fmt.Sprintf(`(() => { const r = document.querySelector(%q).getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()`, sel))
	if len(r) != 4 || r[2] == 0 || r[3] == 0 {
		b.t.Fatalf("%s: no box to click (%v)", sel, r)
	}
	b.do("click "+sel, 5*time.Second, chromedp.MouseClickXY(r[0]+fx*r[2], r[1]+fy*r[3], chromedp.ButtonModifiers(mods...)))
}

// signIn goes through the token form: a wrong token is refused with a
// message, the right one opens the page.
func (b *browser) signIn(url, token string) {
	b.t.Helper()
	b.do("open the page", 20*time.Second, chromedp.Navigate(url), chromedp.WaitVisible(chromedp.CSS("#login")))
	b.shot("login")
	b.do("type a wrong token", 10*time.Second,
		chromedp.SendKeys(chromedp.CSS("#token"), "not-the-token"),
		chromedp.Click(chromedp.CSS("#login-submit")),
		chromedp.WaitVisible(chromedp.CSS("#login-error")))
	if msg := eval[string](b, `document.getElementById("login-error").textContent`); !strings.Contains(msg, "Wrong token") {
		b.t.Errorf("wrong token: the page says %q", msg)
	}
	b.shot("login-refused")
	b.do("type the token", 10*time.Second,
		chromedp.Evaluate[chromedp.Void](`document.getElementById("token").value = ""`),
		chromedp.SendKeys(chromedp.CSS("#token"), token),
		chromedp.Click(chromedp.CSS("#login-submit")),
		chromedp.WaitVisible(chromedp.CSS("#main")))
	if stored := eval[string](b, `sessionStorage.getItem("refinersd.token") || ""`); stored != token {
		b.t.Errorf("after sign-in, sessionStorage holds %q", stored)
	}
}

// newWebFixture is the refinersd binary with the LoRA plugin installed and
// the tiny pipeline's LoRA in the store as tiny-lora.
func newWebFixture(t *testing.T) *daemonFixture {
	t.Helper()
	dir := t.TempDir()
	f := &daemonFixture{dir: dir, bin: filepath.Join(dir, "refinersd"), store: filepath.Join(dir, "store"), plugins: filepath.Join(dir, "plugins")}
	buildBinaries(t, dir, map[string]string{"refinersd": ".", "bin/lora": "../../plugins/lora"})
	f.cli(t, "plugins", "install", filepath.Join(dir, "bin"), "--dir", f.plugins)
	f.cli(t, "adapters", "add", "tiny-lora", filepath.Join(tinySD, "lora.safetensors"), "--store", f.store)
	return f
}

// TestBrowserSignIn: with a token set, the page loads without it, asks for
// it, refuses a wrong one, and once signed in lists the store's adapters
// (an authenticated call); a reload keeps the session.
func TestBrowserSignIn(t *testing.T) {
	b := newBrowser(t)
	f := newWebFixture(t)
	const token = "browser-test-token-0123456789"
	s := f.serve(t, []string{"REFINERSD_TOKEN=" + token}, "--addr", "127.0.0.1:0")
	b.signIn(s.url+"/", token)
	b.do("open the LoRA list", 10*time.Second, chromedp.Click(chromedp.CSS("#loras-box summary")))
	b.wait("the store's LoRA in the list", `document.querySelector('#loras input[data-adapter="tiny-lora"]') !== null`, 10*time.Second)
	b.shot("signed-in")
	b.checkLabels()
	b.checkNarrow()
	b.do("reload", 20*time.Second, chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS("#main")))
	if eval[bool](b, `!document.getElementById("login").hidden`) {
		t.Error("after a reload the page asks for the token again")
	}
	b.do("forget the token", 10*time.Second, chromedp.Click(chromedp.CSS("#logout")), chromedp.WaitVisible(chromedp.CSS("#login")))
	if eval[string](b, `sessionStorage.getItem("refinersd.token") || ""`) != "" {
		t.Error("Forget token left the token in sessionStorage")
	}
}

// genParams are what the test types into the generate form.
type genParams struct {
	prompt, negative  string
	width, height     int
	steps             int
	seed              int
	solver            string
	ran               int    // steps the run takes, if not steps (image to image runs fewer)
	lora              string // an adapter to tick, if any
	pipeline, segment string // model names, if any
}

// generate fills the form, generates, and checks that progress and the
// image arrive; it returns the result's base64 PNG.
func (b *browser) generate(p genParams) string {
	b.t.Helper()
	set := func(id, v string) chromedp.Action[chromedp.Void] {
		return chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`(() => { const e = document.getElementById(%q); e.value = %q; e.dispatchEvent(new Event("change")); })()`, id, v))
	}
	actions := []chromedp.Action[chromedp.Void]{
		chromedp.Click(chromedp.CSS("#tab-generate")),
		chromedp.SendKeys(chromedp.CSS("#prompt"), p.prompt),
		chromedp.SendKeys(chromedp.CSS("#negative"), p.negative),
		set("width", fmt.Sprint(p.width)), set("height", fmt.Sprint(p.height)),
		set("steps", fmt.Sprint(p.steps)), set("seed", fmt.Sprint(p.seed)), set("solver", p.solver),
	}
	if p.pipeline != "" {
		actions = append(actions, set("gen-model", p.pipeline))
	}
	if p.lora != "" {
		actions = append(actions, chromedp.Click(chromedp.CSS("#loras-box summary")),
			chromedp.Click(chromedp.CSS(fmt.Sprintf(`#loras input[data-adapter=%q]`, p.lora))))
	}
	b.do("fill the generate form", 10*time.Second, actions...)
	b.shot("form")
	b.do("press Generate", 5*time.Second, chromedp.Click(chromedp.CSS("#generate")))
	b.wait("the first step", `+document.getElementById("progress").dataset.steps > 0 || !document.getElementById("gen-error").hidden`, 180*time.Second)
	b.shot("progress")
	b.wait("the image", `!document.getElementById("result").hidden || !document.getElementById("gen-error").hidden`, 300*time.Second)
	if msg := eval[string](b, `document.getElementById("gen-error").hidden ? "" : document.getElementById("gen-error").textContent`); msg != "" {
		b.shot("error")
		b.t.Fatalf("generate: the page shows an error: %s", msg)
	}
	b.shot("result")
	progress := eval[map[string]string](b, `(() => { const p = document.getElementById("progress"); return {steps: p.dataset.steps, previews: p.dataset.previews, max: String(p.max), value: String(p.value), label: document.getElementById("progress-label").textContent}; })()`)
	ran := p.steps
	if p.ran != 0 {
		ran = p.ran
	}
	if progress["steps"] != fmt.Sprint(ran) || progress["max"] != "1" || progress["value"] != "1" || !strings.HasPrefix(progress["label"], "Done") {
		b.t.Errorf("progress after the run: %v, want %d step events and a full bar labelled Done", progress, ran)
	}
	// The daemon keeps only the latest step's preview, and none once the
	// job is done: a preview arrives when the page's stream is open before
	// the last step ends (callers ask for enough steps for that).
	if progress["previews"] == "0" {
		b.t.Errorf("no preview image arrived with the %s step events", progress["steps"])
	}
	img := eval[string](b, `document.getElementById("result").src`)
	b64, ok := strings.CutPrefix(img, "data:image/png;base64,")
	if !ok || b64 == "" {
		b.t.Fatalf("the result image is %.60q, want a PNG data URL", img)
	}
	if seed := eval[string](b, `document.getElementById("result").dataset.seed`); seed != fmt.Sprint(p.seed) {
		b.t.Errorf("result seed %s, want %d", seed, p.seed)
	}
	return b64
}

// runAgain opens the gallery, checks that item n shows its image and
// recipe, and runs it again; it returns the new item's PNG (item n+1's,
// the gallery numbers items in order).
func (b *browser) runAgain(n int, p genParams, png string) string {
	b.t.Helper()
	item := fmt.Sprintf("#item-%d", n)
	b.do("open the gallery", 5*time.Second, chromedp.Click(chromedp.CSS("#tab-gallery")), chromedp.WaitVisible(chromedp.CSS(item)))
	b.do("open the recipe", 5*time.Second, chromedp.Click(chromedp.CSS(item+" details summary")))
	recipe := eval[string](b, fmt.Sprintf(`document.querySelector("%s .recipe").textContent`, item))
	for _, want := range []string{p.prompt, fmt.Sprint(p.seed), p.lora} {
		if !strings.Contains(recipe, want) {
			b.t.Errorf("the gallery's recipe lacks %q: %q", want, recipe)
		}
	}
	if got := eval[string](b, fmt.Sprintf(`document.querySelector(%q).dataset.png`, item)); got != png {
		b.t.Errorf("gallery item %d's PNG is not the generated one", n)
	}
	b.shot("gallery")
	next := fmt.Sprintf("item-%d", n+1)
	b.do("press Run again", 5*time.Second, chromedp.Click(chromedp.CSS(item+" button.again")))
	b.wait("the re-run in the gallery", fmt.Sprintf(`document.getElementById(%q) !== null || /Failed/.test(document.querySelector("%s .note").textContent)`, next, item), 300*time.Second)
	if note := eval[string](b, fmt.Sprintf(`document.querySelector("%s .note").textContent`, item)); strings.HasPrefix(note, "Failed") {
		b.shot("error")
		b.t.Fatalf("run again: %s", note)
	}
	b.shot("gallery-run-again")
	return eval[string](b, fmt.Sprintf(`document.getElementById(%q).dataset.png`, next))
}

// segmentFlow uploads an image, clicks a foreground point, then a
// background point (shift-click): masks are drawn with their scores, and
// the second request reuses the cached embedding.
func (b *browser) segmentFlow(imagePath, model string) {
	b.t.Helper()
	b.do("open the segment view", 5*time.Second, chromedp.Click(chromedp.CSS("#tab-segment")))
	if model != "" {
		b.do("name the segmenter", 5*time.Second, chromedp.SendKeys(chromedp.CSS("#seg-model"), model))
	}
	b.do("upload the image", 10*time.Second, chromedp.SetUploadFiles(chromedp.CSS("#seg-image"), []string{imagePath}), chromedp.WaitVisible(chromedp.CSS("#seg-canvas")))
	b.shot("segment-image")
	masksOrError := `document.querySelectorAll("#seg-masks button.mask").length > 0 || !document.getElementById("seg-error").hidden`
	b.clickXY("#seg-canvas", 0.5, 0.5)
	b.wait("masks", masksOrError, 60*time.Second)
	b.checkSegment("first click", "false", 1)
	b.shot("segment-mask")
	b.do("clear the masks", 5*time.Second, chromedp.Evaluate[chromedp.Void](`document.getElementById("seg-masks").replaceChildren()`))
	b.clickXY("#seg-canvas", 0.1, 0.1, chromedp.ModifierShift)
	b.wait("masks for two points", masksOrError, 60*time.Second)
	b.checkSegment("shift-click", "true", 2)
	b.shot("segment-mask-bg")

	// A box dragged over the middle half, then a point from the keyboard
	// (focus, Enter: the cursor starts at the centre).
	r := eval[[]float64](b, `(() => { const r = document.getElementById("seg-canvas").getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()`)
	x0, y0, x1, y1 := r[0]+0.25*r[2], r[1]+0.25*r[3], r[0]+0.75*r[2], r[1]+0.75*r[3]
	clear := chromedp.Evaluate[chromedp.Void](`document.getElementById("seg-masks").replaceChildren()`)
	b.do("drag a box", 10*time.Second, clear,
		chromedp.MouseEvent(chromedp.MousePressed, x0, y0, chromedp.ButtonLeft, chromedp.ClickCount(1)),
		chromedp.MouseEvent(chromedp.MouseMoved, (x0+x1)/2, (y0+y1)/2, chromedp.ButtonLeft),
		chromedp.MouseEvent(chromedp.MouseMoved, x1, y1, chromedp.ButtonLeft),
		chromedp.MouseEvent(chromedp.MouseReleased, x1, y1, chromedp.ButtonLeft, chromedp.ClickCount(1)))
	b.wait("masks for the box", masksOrError, 60*time.Second)
	b.checkSegment("box", "true", 2)
	b.shot("segment-box")
	asked := eval[map[string]any](b, `(() => { const c = document.getElementById("seg-canvas"); return {points: c.dataset.points, box: c.dataset.box.split(",").map(Number), w: c.width, h: c.height}; })()`)
	w, h := asked["w"].(float64), asked["h"].(float64)
	want := []float64{0.25 * w, 0.25 * h, 0.75 * w, 0.75 * h}
	box, _ := asked["box"].([]any)
	for i := range want {
		if len(box) != 4 || math.Abs(box[i].(float64)-want[i]) > 2 {
			b.t.Errorf("segment: the box asked is %v, want about %v (image pixels)", asked["box"], want)
			break
		}
	}
	if n := len(strings.Fields(asked["points"].(string))); n != 2 {
		b.t.Errorf("segment: after the drag %d points are asked (%q), want the 2 clicked", n, asked["points"])
	}
	b.do("add a point from the keyboard", 10*time.Second, clear, chromedp.Focus(chromedp.CSS("#seg-canvas")), chromedp.KeyEvent(kb.Enter))
	b.wait("masks for three points and the box", masksOrError, 60*time.Second)
	b.checkSegment("keyboard", "true", 3)
	b.shot("segment-keyboard")
	if p := eval[string](b, `document.getElementById("seg-canvas").dataset.points`); !strings.HasSuffix(p, fmt.Sprintf("%d,%d,fg", int(w)/2, int(h)/2)) {
		b.t.Errorf("segment: the keyboard point is not at the centre as a foreground point: %q", p)
	}
}

func (b *browser) checkSegment(what, cached string, points int) {
	b.t.Helper()
	if msg := eval[string](b, `document.getElementById("seg-error").hidden ? "" : document.getElementById("seg-error").textContent`); msg != "" {
		b.shot("error")
		b.t.Fatalf("segment (%s): the page shows an error: %s", what, msg)
	}
	info := eval[map[string]any](b, `(() => {
		const bs = [...document.querySelectorAll("#seg-masks button.mask")];
		return {cached: document.getElementById("seg-info").dataset.cached, masks: bs.length,
			scores: bs.map((b) => b.dataset.score), areas: bs.map((b) => [b.dataset.area, b.dataset.pixels]), pressed: bs.filter((b) => b.getAttribute("aria-pressed") === "true").length,
			text: document.getElementById("seg-info").textContent};
	})()`)
	if asked := eval[string](b, `document.getElementById("seg-canvas").dataset.points`); len(strings.Fields(asked)) != points {
		b.t.Errorf("segment (%s): points asked %q, want %d", what, asked, points)
	}
	if info["cached"] != cached {
		b.t.Errorf("segment (%s): cached %v, want %s (%v)", what, info["cached"], cached, info["text"])
	}
	if n, _ := info["masks"].(float64); n < 1 || info["pressed"] != float64(1) {
		b.t.Errorf("segment (%s): %v masks, %v shown, want at least 1 and 1", what, info["masks"], info["pressed"])
	}
	// The overlay tints exactly the mask's pixels, at the image's size.
	for i, a := range info["areas"].([]any) {
		if pair := a.([]any); pair[0] != pair[1] {
			b.t.Errorf("segment (%s): mask %d tints %v pixels, the daemon counts %v inside", what, i+1, pair[0], pair[1])
		}
	}
	for _, s := range info["scores"].([]any) {
		if s == "" || s == "undefined" {
			b.t.Errorf("segment (%s): a mask without a score", what)
		}
	}
}

func absPath(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// tinyPipelineConfig writes a daemon config serving the tiny SD 1.5 of the
// pipeline conformance cases (tinySD: random weights, 64x48 images, and a
// LoRA made for it) as "tiny", and the tiny SAM (tinySAM, segment_test.go)
// as "tiny-sam".
func tinyPipelineConfig(t *testing.T, dir string) string {
	t.Helper()
	f, err := weights.Open(filepath.Join(tinySD, "txt2img_dpm.case.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var files map[string]string
	var sets map[string]map[string]string
	if err := json.Unmarshal([]byte(f.Metadata()["weights"]), &files); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(f.Metadata()["overrides"]), &sets); err != nil {
		t.Fatal(err)
	}
	abs := func(name string) string { return absPath(t, filepath.Join(tinySD, name)) }
	cfg := map[string]any{
		"pipelines": map[string]any{"tiny": map[string]any{
			"unet": abs(files["unet"]), "text_encoder": abs(files["text_encoder"]), "autoencoder": abs(files["autoencoder"]),
			"set": sets, "width": 64, "height": 48, "steps": 8,
		}},
		"segmenters": map[string]any{"tiny-sam": map[string]any{"weights": absPath(t, tinySAM)}},
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "refinersd.yaml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestBrowserGenerate: type a prompt (with a LoRA), generate, watch the
// progress bar and previews, see the image; then run it again from the
// gallery and get the same PNG bytes; then cancel a long run.
func TestBrowserGenerate(t *testing.T) {
	b := newBrowser(t)
	f := newWebFixture(t)
	const token = "browser-test-token-0123456789"
	s := f.serve(t, []string{"REFINERSD_TOKEN=" + token}, "--addr", "127.0.0.1:0", "--config", tinyPipelineConfig(t, f.dir))
	b.signIn(s.url+"/", token)
	if got := eval[map[string]string](b, `({w: document.getElementById("width").value, h: document.getElementById("height").value, steps: document.getElementById("steps").value, model: document.getElementById("gen-model").value})`); got["w"] != "64" || got["h"] != "48" || got["steps"] != "8" || got["model"] != "tiny" {
		t.Errorf("form defaults %v, want the pipeline's: tiny, 64x48, 8 steps", got)
	}
	p := genParams{prompt: "a red cube on a table", negative: "blurry", width: 64, height: 48, steps: 10, seed: 7, solver: "dpm"}
	first := b.generate(p)
	if w, h := pngSize(t, first); w != p.width || h != p.height {
		t.Errorf("the result PNG is %dx%d, want %dx%d", w, h, p.width, p.height)
	}
	if again := b.runAgain(1, p, first); again != first {
		t.Error("run again gave other PNG bytes")
	}
	if note := eval[string](b, `document.querySelector("#item-2 .note").textContent`); !strings.Contains(note, "identical PNG bytes") {
		t.Errorf("the re-run's note says %q", note)
	}

	// Edit puts the recipe back in the form.
	b.do("change the form, then Edit item 1", 5*time.Second,
		chromedp.Evaluate[chromedp.Void](`document.getElementById("prompt").value = "something else"; document.getElementById("seed").value = "1"; document.getElementById("steps").value = "2"`),
		chromedp.Click(chromedp.CSS("#item-1 button.edit")), chromedp.WaitVisible(chromedp.CSS("#view-generate")))
	if got := eval[map[string]string](b, `({prompt: document.getElementById("prompt").value, negative: document.getElementById("negative").value, seed: document.getElementById("seed").value, steps: document.getElementById("steps").value, solver: document.getElementById("solver").value})`); got["prompt"] != p.prompt || got["negative"] != p.negative || got["seed"] != fmt.Sprint(p.seed) || got["steps"] != fmt.Sprint(p.steps) || got["solver"] != p.solver {
		t.Errorf("after Edit the form holds %v, want item 1's recipe", got)
	}

	// The same seed with the LoRA: another image, which runs again to the
	// same bytes (the re-run's recipe keeps the LoRA's store name).
	b.do("clear the prompt", 5*time.Second, chromedp.Click(chromedp.CSS("#tab-generate")),
		chromedp.Evaluate[chromedp.Void](`document.getElementById("prompt").value = ""; document.getElementById("negative").value = ""`))
	withLora := p
	withLora.lora = "tiny-lora"
	lora := b.generate(withLora)
	if caption := eval[string](b, `document.getElementById("result-caption").textContent`); !strings.Contains(caption, "tiny-lora: ") || !strings.Contains(caption, " layers") {
		t.Errorf("the caption does not report the LoRA: %q", caption)
	}
	if samePixels(t, lora, first) {
		t.Error("the LoRA changed nothing: same pixels as without it")
	}
	if again := b.runAgain(3, withLora, lora); again != lora {
		t.Errorf("run again of the LoRA image gave other PNG bytes (same pixels: %v)", samePixels(t, again, lora))
	}

	// A long run, canceled from the page.
	b.do("set a long run", 5*time.Second, chromedp.Click(chromedp.CSS("#tab-generate")),
		chromedp.Evaluate[chromedp.Void](`document.getElementById("steps").value = "150"`))
	b.do("press Generate", 5*time.Second, chromedp.Click(chromedp.CSS("#generate")))
	b.wait("the first step", `+document.getElementById("progress").dataset.steps > 0`, 60*time.Second)
	b.do("press Cancel", 5*time.Second, chromedp.Click(chromedp.CSS("#cancel")))
	b.wait("the cancellation", `document.getElementById("progress-label").textContent === "Canceled"`, 60*time.Second)
	b.shot("canceled")
	if got := eval[map[string]any](b, `({generate: document.getElementById("generate").disabled, cancel: document.getElementById("cancel").disabled, steps: +document.getElementById("progress").dataset.steps, error: document.getElementById("gen-error").hidden})`); got["generate"] != false || got["cancel"] != true || got["error"] != true {
		t.Errorf("after cancel: %v, want Generate enabled, Cancel disabled, no error", got)
	} else if n := got["steps"].(float64); n >= 150 {
		t.Errorf("the canceled run went through all %v steps", n)
	}
}

func decodePNG(t *testing.T, b64 string) image.Image {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatal(err)
	}
	im, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("the page's image is not a PNG: %v", err)
	}
	return im
}

func pngSize(t *testing.T, b64 string) (int, int) {
	r := decodePNG(t, b64).Bounds()
	return r.Dx(), r.Dy()
}

// samePixels compares two PNGs' pixels (not their text chunks).
func samePixels(t *testing.T, a, b string) bool {
	t.Helper()
	ia, ib := decodePNG(t, a), decodePNG(t, b)
	if ia.Bounds() != ib.Bounds() {
		return false
	}
	r := ia.Bounds()
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			if ia.At(x, y) != ib.At(x, y) {
				return false
			}
		}
	}
	return true
}

// TestBrowserSegment: upload an image, click a point and see masks with
// their scores; shift-click a background point and get masks again from
// the cached embedding.
func TestBrowserSegment(t *testing.T) {
	b := newBrowser(t)
	f := newWebFixture(t)
	s := f.serve(t, nil, "--addr", "127.0.0.1:0", "--config", tinyPipelineConfig(t, f.dir))
	b.do("open the page", 20*time.Second, chromedp.Navigate(s.url+"/"), chromedp.WaitVisible(chromedp.CSS("#main")))
	if eval[bool](b, `!document.getElementById("login").hidden`) {
		t.Error("without a token the page asks for one")
	}
	b.wait("the segmenter list", `document.getElementById("seg-model").value === "tiny-sam"`, 10*time.Second)
	b.segmentFlow(absPath(t, tinySAMImage), "")
}

// checkLabels: every form control of the page has an accessible name (a
// label, aria-label or, for buttons, text), and every tab its panel.
func (b *browser) checkLabels() {
	b.t.Helper()
	unnamed := eval[[]string](b, `[...document.querySelectorAll("input, select, textarea, button, canvas[tabindex]")]
		.filter((e) => !(e.labels && e.labels.length) && !e.getAttribute("aria-label") && !(e.tagName === "BUTTON" && e.textContent.trim()))
		.map((e) => e.outerHTML.slice(0, 80))`)
	for _, e := range unnamed {
		b.t.Errorf("a control without a label: %s", e)
	}
	orphans := eval[[]string](b, `[...document.querySelectorAll("[role=tab]")].filter((t) => !document.getElementById(t.getAttribute("aria-controls"))).map((t) => t.id)`)
	for _, id := range orphans {
		b.t.Errorf("tab %s controls no panel", id)
	}
}

// checkNarrow: on a phone-sized screen every view fits the width (no
// sideways scrolling).
func (b *browser) checkNarrow() {
	b.t.Helper()
	b.do("narrow the window", 5*time.Second, chromedp.EmulateViewport(390, 844))
	for _, tab := range []string{"generate", "gallery", "segment"} {
		b.do("open "+tab, 5*time.Second, chromedp.Click(chromedp.CSS("#tab-"+tab)))
		if over := eval[float64](b, `document.documentElement.scrollWidth - window.innerWidth`); over > 0 {
			b.t.Errorf("%s view at 390 px wide: %v px too wide", tab, over)
		}
		b.shot("narrow-" + tab)
	}
	b.do("widen the window", 5*time.Second, chromedp.EmulateViewport(1280, 900), chromedp.Click(chromedp.CSS("#tab-generate")))
}

// TestBrowserDemo: what a fresh clone does: `refinersd demo-weights`, serve
// its config, open the page, generate; then with the demo's ControlNet on
// the Canny edges of a photo (other pixels than without it), and run that
// again from the gallery (the page sends the condition image again): the
// same PNG bytes; then segment that image with the demo's SAM.
func TestBrowserDemo(t *testing.T) {
	b := newBrowser(t)
	dir := t.TempDir()
	demo := filepath.Join(dir, "demo")
	f := &daemonFixture{dir: dir, bin: filepath.Join(dir, "refinersd"), store: filepath.Join(demo, "store"), plugins: filepath.Join(demo, "plugins")}
	buildBinaries(t, dir, map[string]string{"refinersd": ".", "bin/controlnet": "../../plugins/controlnet"})
	f.cli(t, "demo-weights", demo)
	f.cli(t, "plugins", "install", filepath.Join(dir, "bin"), "--dir", f.plugins)
	s := f.serve(t, nil, "--config", filepath.Join(demo, "config.yaml"), "--addr", "127.0.0.1:0")
	b.do("open the page", 20*time.Second, chromedp.Navigate(s.url+"/"), chromedp.WaitVisible(chromedp.CSS("#main")))
	b.wait("the demo pipeline", `document.getElementById("gen-model").value === "demo" && document.querySelector('#cn-adapter option[value="demo-controlnet"]') !== null`, 10*time.Second)

	p := genParams{prompt: "a lighthouse at dusk", width: 64, height: 64, steps: 6, seed: 42, solver: "dpm"}
	plain := b.generate(p)
	b.do("choose the ControlNet", 10*time.Second,
		chromedp.Evaluate[chromedp.Void](`document.getElementById("prompt").value = ""`),
		chromedp.Click(chromedp.CSS("#cn-box summary")),
		chromedp.SetValue(chromedp.CSS("#cn-adapter"), "demo-controlnet"),
		chromedp.SetUploadFiles(chromedp.CSS("#cn-image"), []string{absPath(t, filepath.Join(tinySD, "init.png"))}),
		chromedp.WaitVisible(chromedp.CSS("#cn-preview")),
		chromedp.Evaluate[chromedp.Void](`document.getElementById("cn-low").value = "50"; document.getElementById("cn-high").value = "150"; document.getElementById("cn-scale").value = "2"`))
	control := b.generate(p)
	if caption := eval[string](b, `document.getElementById("result-caption").textContent`); !strings.Contains(caption, "demo-controlnet: steps 6 of 6") {
		t.Errorf("the caption does not report the ControlNet on every step: %q", caption)
	}
	if samePixels(t, control, plain) {
		t.Error("the ControlNet changed nothing: same pixels as without it")
	}
	b.do("open the gallery", 5*time.Second, chromedp.Click(chromedp.CSS("#tab-gallery")), chromedp.Click(chromedp.CSS("#item-2 details summary")))
	recipe := eval[string](b, `document.querySelector("#item-2 .recipe").textContent`)
	for _, want := range []string{`"preprocess":"canny"`, `"adapter":"demo-controlnet"`, `"low":50`, `"high":150`, `"scale":2`} {
		if !strings.Contains(recipe, want) {
			t.Errorf("the ControlNet item's recipe lacks %s: %q", want, recipe)
		}
	}
	if again := b.runAgain(2, p, control); again != control {
		t.Error("run again of the ControlNet image gave other PNG bytes")
	}

	// Image to image from a photo, without the ControlNet: other pixels
	// than from noise, and Run again (which sends the photo again) the
	// same bytes.
	b.do("image to image", 10*time.Second, chromedp.Click(chromedp.CSS("#tab-generate")),
		chromedp.Evaluate[chromedp.Void](`document.getElementById("prompt").value = ""`),
		chromedp.SetValue(chromedp.CSS("#cn-adapter"), ""),
		chromedp.Click(chromedp.CSS("#i2i-box summary")),
		chromedp.SetUploadFiles(chromedp.CSS("#init-image"), []string{absPath(t, filepath.Join(tinySD, "init.png"))}),
		chromedp.WaitVisible(chromedp.CSS("#init-preview")),
		chromedp.Evaluate[chromedp.Void](`document.getElementById("strength").value = "0.5"`))
	withInit := p
	withInit.ran = 3 // strength 0.5 of 6 steps
	i2i := b.generate(withInit)
	if samePixels(t, i2i, plain) || samePixels(t, i2i, control) {
		t.Error("image to image gave the pixels of another run")
	}
	b.do("open the gallery", 5*time.Second, chromedp.Click(chromedp.CSS("#tab-gallery")), chromedp.Click(chromedp.CSS("#item-4 details summary")))
	if recipe := eval[string](b, `document.querySelector("#item-4 .recipe").textContent`); !strings.Contains(recipe, "strength0.5") || !strings.Contains(recipe, "init_imagesha256:") || strings.Contains(recipe, "controlnets") {
		t.Errorf("the image-to-image item's recipe: %q", recipe)
	}
	if again := b.runAgain(4, p, i2i); again != i2i {
		t.Error("run again of the image-to-image result gave other PNG bytes")
	}

	// And segment the image just made with the demo's SAM.
	if got := eval[string](b, `document.getElementById("seg-model").value`); got != "demo-sam" {
		t.Errorf("the segmenter field holds %q, want the demo's only one, demo-sam", got)
	}
	png, err := base64.StdEncoding.DecodeString(i2i)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "generated.png")
	if err := os.WriteFile(img, png, 0o644); err != nil {
		t.Fatal(err)
	}
	b.segmentFlow(img, "")
}
