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
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
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

// TestBrowserSignIn: with a token set, the page loads without it, asks for
// it, refuses a wrong one, and once signed in lists the store's adapters
// (an authenticated call); a reload keeps the session.
func TestBrowserSignIn(t *testing.T) {
	b := newBrowser(t)
	f := newDaemonFixture(t)
	const token = "browser-test-token-0123456789"
	s := f.serve(t, []string{"REFINERSD_TOKEN=" + token}, "--addr", "127.0.0.1:0")
	b.signIn(s.url+"/", token)
	b.do("open the LoRA list", 10*time.Second, chromedp.Click(chromedp.CSS("#loras-box summary")))
	b.wait("the store's LoRA in the list", `document.querySelector('#loras input[data-adapter="ff-lora"]') !== null`, 10*time.Second)
	b.shot("signed-in")
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
	b.wait("the first step", `+document.getElementById("progress").dataset.steps > 0 || !document.getElementById("gen-error").hidden`, 60*time.Second)
	b.shot("progress")
	b.wait("the image", `!document.getElementById("result").hidden || !document.getElementById("gen-error").hidden`, 120*time.Second)
	if msg := eval[string](b, `document.getElementById("gen-error").hidden ? "" : document.getElementById("gen-error").textContent`); msg != "" {
		b.shot("error")
		b.t.Fatalf("generate: the page shows an error: %s", msg)
	}
	b.shot("result")
	progress := eval[map[string]string](b, `(() => { const p = document.getElementById("progress"); return {steps: p.dataset.steps, previews: p.dataset.previews, max: String(p.max), value: String(p.value), label: document.getElementById("progress-label").textContent}; })()`)
	if progress["steps"] != fmt.Sprint(p.steps) || progress["max"] != "1" || progress["value"] != "1" || !strings.HasPrefix(progress["label"], "Done") {
		b.t.Errorf("progress after the run: %v, want %d step events and a full bar labelled Done", progress, p.steps)
	}
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

// runAgain opens the gallery, checks the first item shows the recipe, and
// runs it again: the new item must carry the same PNG bytes.
func (b *browser) runAgain(p genParams, first string) {
	b.t.Helper()
	b.do("open the gallery", 5*time.Second, chromedp.Click(chromedp.CSS("#tab-gallery")), chromedp.WaitVisible(chromedp.CSS("#item-1")))
	b.do("open the recipe", 5*time.Second, chromedp.Click(chromedp.CSS("#item-1 details summary")))
	recipe := eval[string](b, `document.querySelector("#item-1 .recipe").textContent`)
	for _, want := range []string{p.prompt, fmt.Sprint(p.seed)} {
		if !strings.Contains(recipe, want) {
			b.t.Errorf("the gallery's recipe lacks %q: %q", want, recipe)
		}
	}
	if got := eval[string](b, `document.getElementById("item-1").dataset.png`); got != first {
		b.t.Errorf("the gallery item's PNG is not the generated one")
	}
	b.shot("gallery")
	b.do("press Run again", 5*time.Second, chromedp.Click(chromedp.CSS("#item-1 button.again")))
	b.wait("the re-run in the gallery", `document.getElementById("item-2") !== null || /Failed/.test(document.querySelector("#item-1 .note").textContent)`, 120*time.Second)
	if note := eval[string](b, `document.querySelector("#item-1 .note").textContent`); strings.HasPrefix(note, "Failed") {
		b.shot("error")
		b.t.Fatalf("run again: %s", note)
	}
	b.shot("gallery-run-again")
	again := eval[map[string]string](b, `(() => { const e = document.getElementById("item-2"); return {png: e.dataset.png, same: e.dataset.same, note: e.querySelector(".note").textContent}; })()`)
	if again["png"] != first || again["same"] != "true" {
		b.t.Errorf("run again gave other PNG bytes (page note: %q)", again["note"])
	}
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
			scores: bs.map((b) => b.dataset.score), pressed: bs.filter((b) => b.getAttribute("aria-pressed") === "true").length,
			text: document.getElementById("seg-info").textContent};
	})()`)
	if info["cached"] != cached {
		b.t.Errorf("segment (%s): cached %v, want %s (%v)", what, info["cached"], cached, info["text"])
	}
	if n, _ := info["masks"].(float64); n < 1 || info["pressed"] != float64(1) {
		b.t.Errorf("segment (%s): %v masks, %v shown, want at least 1 and 1", what, info["masks"], info["pressed"])
	}
	for _, s := range info["scores"].([]any) {
		if s == "" || s == "undefined" {
			b.t.Errorf("segment (%s): a mask without a score", what)
		}
	}
}
