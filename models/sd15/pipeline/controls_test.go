package pipeline

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/hosts"
	"github.com/refiners-go/refiners/imageproc"
	"github.com/refiners-go/refiners/spec"
	"github.com/refiners-go/refiners/specs"
)

// tinyControlnetSet sizes specs/sd15_controlnet.yaml for the tiny U-Net
// (its widths, embeddings, 2 heads and 2 groups; a condition encoder of
// 4/6/8/8 channels).
var tinyControlnetSet = map[string]string{"channels_1": "4", "channels_2": "8", "channels_3": "12",
	"sinusoidal_embedding_dim": "4", "timestep_embedding_dim": "16", "clip_embedding_dim": "4", "num_heads": "2",
	"num_groups": "2", "condition_channels_1": "4", "condition_channels_2": "6", "condition_channels_3": "8",
	"condition_channels_4": "8"}

// writeTinyControlnet writes a ControlNet for the tiny U-Net with seeded
// random weights (N(0, 1)/√fan-in for kernels and matrices, so features
// stay O(1) and the zero convolutions are not zero), in Refiners' layout,
// under prefix.
func writeTinyControlnet(t *testing.T, path string, seed uint64, prefix string) {
	t.Helper()
	sp, err := spec.LoadFS(specs.FS, "sd15_controlnet.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cn, err := sp.Build(tinyControlnetSet)
	if err != nil {
		t.Fatal(err)
	}
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
		ts := map[string]*tensor.Tensor{}
		for i, e := range core.StateDict(cn) {
			v := s.Randn(seed*1000+uint64(i), tensor.Float32, e.Shape...)
			if len(e.Shape) > 1 {
				fan := int64(1)
				for _, d := range e.Shape[1:] {
					fan *= d
				}
				v = s.Scale(v, 1/math.Sqrt(float64(fan)))
			} else {
				v = s.Scale(v, 0.1)
			}
			ts[prefix+e.Key] = v
		}
		return weights.Save(s, path, ts, nil)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// pluginHost builds the named plugins (plugins/<name>) once per test
// binary and installs them in a host of the test's own.
var (
	pluginBuild sync.Map // name -> *builtPlugin
)

type builtPlugin struct {
	once sync.Once
	path string
	err  error
}

func pluginHost(t *testing.T, names ...string) *hosts.Host {
	t.Helper()
	h, err := hosts.New(t.TempDir(), hosts.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	for _, name := range names {
		v, _ := pluginBuild.LoadOrStore(name, &builtPlugin{})
		b := v.(*builtPlugin)
		b.once.Do(func() {
			dir, err := os.MkdirTemp("", "refiners-pipeline-plugin-")
			if err != nil {
				b.err = err
				return
			}
			b.path = filepath.Join(dir, name)
			if out, err := exec.Command("go", "build", "-o", b.path, "../../../plugins/"+name).CombinedOutput(); err != nil {
				b.err = fmt.Errorf("building plugin %s: %v\n%s", name, err, out)
			}
		})
		if b.err != nil {
			t.Fatal(b.err)
		}
		if _, err := h.Install(context.Background(), b.path); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// stripes is a w×h test picture with edges: vertical bands and a square.
func stripes(w, h int) *RGB {
	img := NewRGB(w, h)
	for y := range h {
		for x := range w {
			v := uint8(0)
			if (x/7)%2 == 0 || (x > w/3 && x < 2*w/3 && y > h/3 && y < 2*h/3) {
				v = 220
			}
			i := 3 * (y*w + x)
			img.Pix[i], img.Pix[i+1], img.Pix[i+2] = v, uint8(x*3), uint8(y*5)
		}
	}
	return img
}

// controlFixture is the tiny model with the controlnet (and lora)
// plugins and two ControlNet files.
type controlFixture struct {
	a, b string // ControlNet files: Refiners layout, and under a prefix
}

func newControlFixture(t *testing.T) controlFixture {
	dir := t.TempDir()
	f := controlFixture{a: filepath.Join(dir, "a.safetensors"), b: filepath.Join(dir, "b.safetensors")}
	writeTinyControlnet(t, f.a, 1, "")
	writeTinyControlnet(t, f.b, 2, "controlnet.")
	return f
}

// modelState is a model's tree print and parameter bytes.
type modelState struct {
	tree   string
	params map[string][]byte
}

func stateOf(s *tensor.Scope, m *core.Chain) modelState {
	st := modelState{tree: m.String(), params: map[string][]byte{}}
	for _, e := range core.StateDict(m) {
		st.params[e.Key] = s.Bytes(*e.Value)
	}
	return st
}

func (st modelState) same(s *tensor.Scope, m *core.Chain) error {
	now := stateOf(s, m)
	if now.tree != st.tree {
		return fmt.Errorf("tree changed:\n%s\nwant:\n%s", now.tree, st.tree)
	}
	if len(now.params) != len(st.params) {
		return fmt.Errorf("%d parameters, want %d", len(now.params), len(st.params))
	}
	for k, v := range st.params {
		if !bytes.Equal(now.params[k], v) {
			return fmt.Errorf("parameter %s changed", k)
		}
	}
	return nil
}

func sameLatents(s *tensor.Scope, a, b *tensor.Tensor) bool {
	x, y := s.Bytes(a), s.Bytes(b)
	return s.Err() == nil && bytes.Equal(x, y)
}

// TestControlActive is diffusers' controlnet_keep rule, table by table
// (the want columns are Python's 1.0 - float(i / n < s or (i + 1) / n > e)
// for i in range(n)).
func TestControlActive(t *testing.T) {
	for _, c := range []struct {
		n          int
		start, end float64
		want       string
	}{
		{4, 0, 1, "1111"},
		{4, 0.5, 1, "0011"},
		{4, 0, 0.5, "1100"},
		{4, 0.25, 0.75, "0110"},
		{4, 0, 0.6, "1100"},    // step 2 ends at 0.75 > 0.6
		{4, 0.1, 1, "0111"},    // step 0 starts at 0 < 0.1
		{4, 0.9, 1, "0000"},    // no step starts at or after 0.9
		{3, 0, 2.0 / 3, "110"}, // (1+1)/3 == 2/3 in float64
		{10, 0.3, 0.7, "0001111000"},
		{7, 1.0 / 7, 6.0 / 7, "0111110"},
	} {
		var got strings.Builder
		for i := range c.n {
			if ControlActive(i, c.n, c.start, c.end) {
				got.WriteByte('1')
			} else {
				got.WriteByte('0')
			}
		}
		if got.String() != c.want {
			t.Errorf("n %d, [%g, %g]: %s, want %s", c.n, c.start, c.end, got.String(), c.want)
		}
	}
}

// TestControlDefaults: zero values take their defaults, bad values are
// input errors naming the control.
func TestControlDefaults(t *testing.T) {
	img := NewRGB(8, 8)
	ok := Control{Plugin: "controlnet", File: "cn.safetensors", Condition: img}
	c, err := ok.withDefaults(0)
	if err != nil || c.Scale != 1 || c.Start != 0 || c.End != 1 {
		t.Fatalf("defaults: %+v, %v", c, err)
	}
	canny := ok
	canny.Preprocess = "canny"
	if c, err := canny.withDefaults(0); err != nil || c.CannyLow != 100 || c.CannyHigh != 200 {
		t.Fatalf("canny defaults: %+v, %v", c, err)
	}
	for _, c := range []struct {
		name string
		edit func(*Control)
		want string
	}{
		{"no plugin", func(c *Control) { c.Plugin = "" }, "control 2 (cn.safetensors): no plugin"},
		{"no file", func(c *Control) { c.File = "" }, "control 2: no ControlNet file"},
		{"no condition", func(c *Control) { c.Condition = nil }, "no condition image"},
		{"negative scale", func(c *Control) { c.Scale = -0.5 }, "scale -0.5"},
		{"NaN scale", func(c *Control) { c.Scale = math.NaN() }, "scale NaN is not a number"},
		{"start after end", func(c *Control) { c.Start, c.End = 0.8, 0.4 }, "start 0.8, end 0.4"},
		{"start equals end", func(c *Control) { c.Start, c.End = 0.5, 0.5 }, "want 0 ≤ start < end ≤ 1"},
		{"end over 1", func(c *Control) { c.End = 1.5 }, "end 1.5"},
		{"negative start", func(c *Control) { c.Start = -0.1 }, "start -0.1"},
		{"start 1", func(c *Control) { c.Start = 1 }, "start 1, end 1"},
		{"thresholds without canny", func(c *Control) { c.CannyLow = 10 }, "canny thresholds without preprocess canny"},
		{"low over high", func(c *Control) { c.Preprocess, c.CannyLow, c.CannyHigh = "canny", 200, 100 }, "low 200, high 100"},
		{"unknown preprocess", func(c *Control) { c.Preprocess = "depth" }, `unknown preprocess "depth"`},
	} {
		cc := ok
		c.edit(&cc)
		r := tinyRequest()
		r.Controls = []Control{ok, cc}
		_, err := r.WithDefaults()
		if err == nil || !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want ErrInput containing %q", c.name, err, c.want)
		}
	}
}

// TestConditionImage: the condition is resized as init images are, and
// with canny it is the edge map of the resized image on three channels.
func TestConditionImage(t *testing.T) {
	src := stripes(50, 37)
	c := Control{Condition: src}
	if got, want := c.ConditionImage(64, 48), src.Resize(64, 48); !bytes.Equal(got.Pix, want.Pix) || got.Width != 64 || got.Height != 48 {
		t.Error("the condition is not the resized image")
	}
	c.Preprocess, c.CannyLow, c.CannyHigh = "canny", 50, 120
	got := c.ConditionImage(64, 48)
	edges := imageproc.CannyRGB(src.Resize(64, 48).Image(), 50, 120)
	n := 0
	for i, v := range edges.Pix {
		if got.Pix[3*i] != v || got.Pix[3*i+1] != v || got.Pix[3*i+2] != v {
			t.Fatalf("pixel %d: %v, want the edge value %d on three channels", i, got.Pix[3*i:3*i+3], v)
		}
		if v == 255 {
			n++
		}
	}
	if n == 0 || n == len(edges.Pix) {
		t.Errorf("%d edge pixels of %d: the test picture should have some edges", n, len(edges.Pix))
	}
}

// TestControls runs the tiny pipeline with ControlNets through the real
// plugin: one ControlNet changes the image; one whose range holds no step
// leaves the latents bit for bit as without it (scale 0 adds nothing); two
// at once (one from a prefixed file) differ from either alone; the U-Net
// is exactly restored after each generation, also after a failure while
// inserting, a cancellation, or a duplicate name; and the report says what
// each did.
func TestControls(t *testing.T) {
	fx := newControlFixture(t)
	host := pluginHost(t, "controlnet")
	cond := stripes(64, 48)
	withTiny(t, false, func(s *tensor.Scope, m *Model) error {
		m.Plugins = host
		before := stateOf(s, m.UNet)
		gen := func(r Request) (*Result, error) {
			res, err := m.Generate(context.Background(), s, r)
			if serr := before.same(s, m.UNet); serr != nil {
				t.Fatalf("after a generation (error %v): the U-Net: %v", err, serr)
			}
			return res, err
		}
		ctl := func(file string, scale, start, end float64) Control {
			return Control{Plugin: "controlnet", File: file, Condition: cond, Scale: scale, Start: start, End: end}
		}
		plain, err := gen(tinyRequest())
		if err != nil {
			return err
		}

		r := tinyRequest()
		r.Controls = []Control{ctl(fx.a, 0, 0, 0)}
		one, err := gen(r)
		if err != nil {
			return err
		}
		if sameLatents(s, one.Latents, plain.Latents) {
			t.Error("a ControlNet changed nothing")
		}
		if len(one.Controls) != 1 {
			t.Fatalf("reports %+v", one.Controls)
		}
		rep := one.Controls[0]
		if rep.Name != "control0" || rep.Format != "refiners" || rep.Scale != 1 || rep.End != 1 || rep.ActiveSteps != 4 ||
			rep.FirstStep != 0 || rep.LastStep != 3 || rep.Keys == 0 || rep.Matched != rep.Keys || len(rep.Unmatched) != 0 {
			t.Errorf("report %+v", rep)
		}

		// Never active (n = 4: no step starts at or after 0.9): exactly
		// the plain run.
		r.Controls = []Control{ctl(fx.a, 2, 0.9, 1)}
		off, err := gen(r)
		if err != nil {
			return err
		}
		if !sameLatents(s, off.Latents, plain.Latents) {
			t.Error("a ControlNet at scale 0 at every step changed the latents")
		}
		if off.Controls[0].ActiveSteps != 0 || off.Controls[0].FirstStep != -1 {
			t.Errorf("report %+v", off.Controls[0])
		}

		// Active for the last half only: differs from both.
		r.Controls = []Control{ctl(fx.a, 1, 0.5, 1)}
		half, err := gen(r)
		if err != nil {
			return err
		}
		if sameLatents(s, half.Latents, plain.Latents) || sameLatents(s, half.Latents, one.Latents) {
			t.Error("a ControlNet on the last half of the steps gave the plain or the full run")
		}
		if rep := half.Controls[0]; rep.ActiveSteps != 2 || rep.FirstStep != 2 || rep.LastStep != 3 {
			t.Errorf("report %+v", rep)
		}

		// Two at once, the second from a prefixed file with its own name.
		r.Controls = []Control{ctl(fx.a, 0, 0, 0), ctl(fx.b, 0.7, 0, 0.5)}
		r.Controls[1].Params = `{"name": "depth"}`
		two, err := gen(r)
		if err != nil {
			return err
		}
		if sameLatents(s, two.Latents, one.Latents) || sameLatents(s, two.Latents, plain.Latents) {
			t.Error("a second ControlNet changed nothing")
		}
		if len(two.Controls) != 2 || two.Controls[0].Name != "control0" || two.Controls[1].Name != "depth" || two.Controls[1].ActiveSteps != 2 {
			t.Errorf("reports %+v", two.Controls)
		}

		// A batch of two: one condition for every image; image 2 is seed
		// Seed+1's alone (up to the kernels' summing order).
		r = tinyRequest()
		r.Batch, r.Controls = 2, []Control{ctl(fx.a, 0.5, 0, 0)}
		batch, err := gen(r)
		if err != nil {
			return err
		}
		r.Batch, r.Seed = 1, r.Seed+1
		second, err := gen(r)
		if err != nil {
			return err
		}
		if !s.AllClose(s.Narrow(batch.Latents, 0, 1, 1), second.Latents, 1e-4, 1e-4) {
			t.Error("image 2 of a batch with a ControlNet is not seed+1's")
		}

		// Canny preprocessing of a photo gives another condition.
		r = tinyRequest()
		r.Controls = []Control{ctl(fx.a, 0, 0, 0)}
		r.Controls[0].Preprocess = "canny"
		edges, err := gen(r)
		if err != nil {
			return err
		}
		if sameLatents(s, edges.Latents, one.Latents) {
			t.Error("canny preprocessing changed nothing")
		}

		// Failures leave the U-Net as it was.
		bad := filepath.Join(t.TempDir(), "bad.safetensors")
		if err := os.WriteFile(bad, []byte("not safetensors"), 0o644); err != nil {
			return err
		}
		for _, c := range []struct {
			name     string
			controls []Control
			want     string
		}{
			{"bad second file", []Control{ctl(fx.a, 0, 0, 0), ctl(bad, 0, 0, 0)}, "control 2 " + bad},
			{"duplicate name", []Control{ctl(fx.a, 0, 0, 0), {Plugin: "controlnet", File: fx.b, Params: `{"name": "control0"}`, Condition: cond}}, "control0"},
			{"scale in params", []Control{{Plugin: "controlnet", File: fx.a, Params: `{"scale": 2}`, Condition: cond}}, "give the scale as the control's scale"},
			{"not a ControlNet", []Control{ctl(filepath.Join(tinyDir, "lora.safetensors"), 0, 0, 0)}, "not an SD 1.5 ControlNet"},
			{"unknown plugin", []Control{{Plugin: "nope", File: fx.a, Condition: cond}}, "nope"},
		} {
			r := tinyRequest()
			r.Controls = c.controls
			if res, err := gen(r); err == nil || res != nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: got %v, want an error containing %q", c.name, err, c.want)
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		r = tinyRequest()
		r.Controls = []Control{ctl(fx.a, 0, 0, 0), ctl(fx.b, 0, 0, 0)}
		r.Controls[1].Params = `{"name": "other"}`
		r.Progress = func(p Progress) {
			if p.Step == 2 {
				cancel()
			}
		}
		if _, err := m.Generate(ctx, s, r); !errors.Is(err, context.Canceled) {
			t.Errorf("canceled: %v", err)
		}
		if err := before.same(s, m.UNet); err != nil {
			t.Errorf("after a cancellation: %v", err)
		}

		// No host: an input error before any work.
		m.Plugins = nil
		r = tinyRequest()
		r.Controls = []Control{ctl(fx.a, 0, 0, 0)}
		if _, err := m.Generate(context.Background(), s, r); !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), "no plugin host") {
			t.Errorf("no host: %v", err)
		}
		return s.Err()
	})
}

// TestControlsWithLora: a LoRA and a ControlNet in one generation. The
// LoRA is planned and applied before the ControlNet goes in, so it adapts
// the U-Net's layers only, exactly as many as without the ControlNet, and
// never the ControlNet's (which has layers of the same types).
func TestControlsWithLora(t *testing.T) {
	fx := newControlFixture(t)
	host := pluginHost(t, "controlnet", "lora")
	withTiny(t, false, func(s *tensor.Scope, m *Model) error {
		m.Plugins = host
		before := stateOf(s, m.UNet)
		r := tinyRequest()
		r.Adapters = []Adapter{{Plugin: "lora", File: filepath.Join(tinyDir, "lora.safetensors"), Params: `{"scale": 0.8}`}}
		alone, err := m.Generate(context.Background(), s, r)
		if err != nil {
			return err
		}
		r.Controls = []Control{{Plugin: "controlnet", File: fx.a, Condition: stripes(64, 48)}}
		both, err := m.Generate(context.Background(), s, r)
		if err != nil {
			return err
		}
		if err := before.same(s, m.UNet); err != nil {
			t.Errorf("after the generation: %v", err)
		}
		a, b := alone.Adapters[0], both.Adapters[0]
		if a.UNetLayers == 0 || b.UNetLayers != a.UNetLayers || b.TextEncoderLayers != a.TextEncoderLayers || len(b.Unmatched) != len(a.Unmatched) {
			t.Errorf("LoRA with a ControlNet: %d U-Net layers (%d unmatched keys), alone %d (%d)", b.UNetLayers, len(b.Unmatched), a.UNetLayers, len(a.Unmatched))
		}
		if sameLatents(s, alone.Latents, both.Latents) {
			t.Error("the ControlNet changed nothing")
		}
		return s.Err()
	})
}

// TestDetachOff: the ControlNets off at a step leave the U-Net for that
// step only, and go back exactly where they were (order, keys, print).
func TestDetachOff(t *testing.T) {
	fx := newControlFixture(t)
	host := pluginHost(t, "controlnet")
	withTiny(t, false, func(s *tensor.Scope, m *Model) error {
		m.Plugins = host
		cond := stripes(64, 48)
		controls := []Control{
			{Plugin: "controlnet", File: fx.a, Condition: cond, Scale: 1, Start: 0.5, End: 1},
			{Plugin: "controlnet", File: fx.b, Condition: cond, Scale: 1, End: 1},
			{Plugin: "controlnet", File: fx.a, Params: `{"name": "third"}`, Condition: cond, Scale: 1, Start: 0.25, End: 1},
		}
		before := stateOf(s, m.UNet)
		active, _, eject, err := m.applyControls(context.Background(), s, controls, 64, 48, 4)
		if err != nil {
			return err
		}
		kids, tree := m.UNet.Children(), m.UNet.String()
		for _, c := range []struct {
			step int
			on   []int // controls left in
		}{{0, []int{1}}, {1, []int{1, 2}}, {2, []int{0, 1, 2}}} {
			restore, err := m.detachOff(active, c.step, 4)
			if err != nil {
				return err
			}
			got := m.UNet.Children()
			if len(got) != len(kids)-(3-len(c.on)) {
				t.Errorf("step %d: %d children, want %d", c.step, len(got), len(kids)-(3-len(c.on)))
			}
			for j, a := range active {
				in := false
				for _, k := range got {
					in = in || k == a.module
				}
				if want := slices.Contains(c.on, j); in != want {
					t.Errorf("step %d: control %d in the U-Net: %v, want %v", c.step, j+1, in, want)
				}
			}
			if err := restore(); err != nil {
				return err
			}
			if !slices.Equal(m.UNet.Children(), kids) || m.UNet.String() != tree {
				t.Errorf("step %d: the U-Net after restore is not as before", c.step)
			}
		}
		if err := eject(); err != nil {
			return err
		}
		return before.same(s, m.UNet)
	})
}
