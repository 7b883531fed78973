package conformance

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/nlpodyssey/safetensors"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/diffusion"
)

// The solver and seeded-noise vectors depend on libtorch's CPU kernel
// (ATEN_CPU_CAPABILITY), which libtorch reads once per process: TestSolvers
// runs its checks in one child process per kernel, each against the file
// generate_solvers.py wrote under that kernel.
const solversChildEnv = "REFINERS_SOLVERS_CAPABILITY"

var solverCapabilities = []string{"default", "avx2"}

// solverErrorBound is how many times the reference's own float32 error
// (|output − ref64|) a step may be off the float64 reference; the floor of
// that yardstick is solverFloorRoundoffs float32 roundoffs of the largest
// value. The solvers are meant to be bit-identical to Refiners' float32 run
// (checked separately); the bound is the project-wide error model's.
const (
	solverErrorBound     = 8
	solverFloorRoundoffs = 8
)

// TestSolvers checks diffusion's solvers (timesteps, schedule, every step,
// add_noise, scale_model_input, init sigma) and tensor.Randn against
// Refiners 0.4.0 and torch 2.1.2, under the default and AVX2 kernels.
func TestSolvers(t *testing.T) {
	if capability := os.Getenv(solversChildEnv); capability != "" {
		checkSolvers(t, capability)
		return
	}
	var report strings.Builder
	for _, capability := range solverCapabilities {
		t.Run(capability, func(t *testing.T) {
			out, err := os.CreateTemp(t.TempDir(), "report")
			if err != nil {
				t.Fatal(err)
			}
			out.Close()
			cmd := exec.Command(os.Args[0], "-test.run=^TestSolvers$", "-test.count=1")
			cmd.Env = append(os.Environ(), solversChildEnv+"="+capability, "ATEN_CPU_CAPABILITY="+capability,
				"CONFORMANCE_REPORT="+out.Name())
			log, err := cmd.CombinedOutput()
			if err != nil {
				t.Errorf("checks under ATEN_CPU_CAPABILITY=%s failed (%v):\n%s", capability, err, log)
			}
			table, rerr := os.ReadFile(out.Name())
			if rerr != nil {
				t.Fatal(rerr)
			}
			report.Write(table)
		})
	}
	publishReport(t, report.String())
}

// checkSolvers runs every check in this (child) process.
func checkSolvers(t *testing.T, capability string) {
	if got := os.Getenv("ATEN_CPU_CAPABILITY"); got != capability {
		t.Fatalf("child for %s runs with ATEN_CPU_CAPABILITY=%q", capability, got)
	}
	g, err := openGolden(filepath.Join("testdata", "solvers", capability+".safetensors"))
	if err != nil {
		t.Fatalf("%v (regenerate with make golden)", err)
	}
	if g.meta["capability"] != capability {
		t.Fatalf("%s was written under ATEN_CPU_CAPABILITY=%s", g.path, g.meta["capability"])
	}
	var rows []string
	row := func(name, what string, worst solverDiff, exact, total int) {
		status := "pass"
		if !worst.pass || exact != total {
			status = "FAIL"
		}
		rows = append(rows, fmt.Sprintf("%-8s %-12s %-38s %-9s %-10.3g %-10s %s", capability, name, what,
			fmt.Sprintf("%d/%d", exact, total), worst.err, ratioString(worst), status))
	}

	t.Run("schedule", func(t *testing.T) {
		sch, err := diffusion.NoiseSchedule()
		if err != nil {
			t.Fatal(err)
		}
		exact, total := 0, 0
		for key, got := range map[string][]float32{
			"cumulative_scale_factors": sch.CumulativeScaleFactors,
			"noise_std":                sch.NoiseStd,
			"signal_to_noise_ratios":   sch.SignalToNoiseRatios,
		} {
			want := g.float32s(t, "schedule."+key)
			total++
			if n := bitDiffs(got, want); n > 0 {
				t.Errorf("schedule %s: %d of %d values differ from Refiners'", key, n, len(want))
			} else {
				exact++
			}
		}
		row("schedule", "3 buffers of 1000", solverDiff{pass: true}, exact, total)
	})

	t.Run("randn", func(t *testing.T) {
		var draws []struct {
			Seed  string  `json:"seed"`
			Shape []int64 `json:"shape"`
			DType string  `json:"dtype"`
		}
		if err := json.Unmarshal([]byte(g.meta["randn"]), &draws); err != nil || len(draws) == 0 {
			t.Fatalf("%s: randn metadata: %v", g.path, err)
		}
		exact := 0
		for i, d := range draws {
			seed, err := strconv.ParseUint(d.Seed, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			dt, err := tensor.ParseDType(d.DType)
			if err != nil {
				t.Fatal(err)
			}
			want, shape := g.raw(t, fmt.Sprintf("randn.%d", i))
			var got []byte
			var gotShape []int64
			err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
				x := s.Randn(seed, dt, d.Shape...)
				if s.Err() == nil {
					gotShape = x.Shape()
				}
				got = s.Bytes(x)
				return s.Err()
			})
			switch {
			case err != nil:
				t.Errorf("randn seed %d %v %s: %v", seed, d.Shape, dt, err)
			case !slices.Equal(gotShape, shape):
				t.Errorf("randn seed %d %v %s: shape %v", seed, d.Shape, dt, gotShape)
			case string(got) != string(want):
				t.Errorf("randn seed %d %v %s: values differ from torch's", seed, d.Shape, dt)
			default:
				exact++
			}
		}
		row("randn", fmt.Sprintf("%d draws, sizes 1 to 16384", len(draws)), solverDiff{pass: true}, exact, len(draws))
	})

	var cases []struct {
		Name      string `json:"name"`
		Solver    string `json:"solver"`
		Steps     int    `json:"steps"`
		FirstStep int    `json:"first_step"`
	}
	if err := json.Unmarshal([]byte(g.meta["cases"]), &cases); err != nil || len(cases) == 0 {
		t.Fatalf("%s: cases metadata: %v", g.path, err)
	}
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			sv, err := diffusion.NewSolver(c.Solver, c.Steps, c.FirstStep)
			if err != nil {
				t.Fatal(err)
			}
			defer sv.Close()
			// Timesteps: exact.
			wantTS := g.float64s(t, c.Name+".timesteps")
			gotTS := make([]float64, sv.NumSteps())
			for i := range gotTS {
				gotTS[i] = sv.Timestep(i)
			}
			if !slices.Equal(gotTS, wantTS) {
				t.Errorf("timesteps %v, want %v", gotTS, wantTS)
			}
			tsExact := 0
			if slices.Equal(gotTS, wantTS) {
				tsExact = 1
			}
			row(c.Name, fmt.Sprintf("timesteps (%d)", len(wantTS)), solverDiff{pass: true}, tsExact, 1)

			worst, exact, total := solverDiff{pass: true}, 0, 0
			check := func(s *tensor.Scope, what string, got *tensor.Tensor) {
				d := g.check(t, s, "output."+c.Name+"."+what, got)
				total++
				if d.exact {
					exact++
				} else {
					t.Errorf("%s: not bit-identical to Refiners' float32 output (%d elements differ)", what, d.mismatches)
				}
				if !d.pass {
					t.Errorf("%s: %s", what, d)
				}
				if d.ratio > worst.ratio || !d.pass {
					worst = d
				}
			}
			err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
				x := g.load(t, s, "input."+c.Name+".x")
				if c.FirstStep > 0 && c.Solver != "euler" {
					x = sv.AddNoise(s, x, g.load(t, s, "input."+c.Name+".noise"), c.FirstStep)
				}
				x = s.Scale(x, sv.InitNoiseSigma())
				check(s, "init", x)
				if c.Solver == "euler" {
					check(s, "sigma", s.FromFloat32([]float32{float32(sv.InitNoiseSigma())}, 1))
				}
				for k := sv.FirstStep(); k < sv.NumSteps(); k++ {
					step := s.Child()
					if c.Solver == "euler" {
						check(step, fmt.Sprintf("scale.%d", k), sv.ScaleModelInput(step, x, k))
					}
					next := sv.Step(step, x, g.load(t, step, fmt.Sprintf("input.%s.eps.%d", c.Name, k)), k)
					check(step, fmt.Sprintf("step.%d", k), next)
					step.Close(next)
					x = next
				}
				return s.Err()
			})
			if err != nil {
				t.Fatal(err)
			}
			row(c.Name, fmt.Sprintf("%d outputs (init, steps%s)", total, map[bool]string{true: ", scale, sigma"}[c.Solver == "euler"]), worst, exact, total)
		})
	}
	slices.Sort(rows)
	publishReport(t, fmt.Sprintf("%-8s %-12s %-38s %-9s %-10s %-10s %s\n%s\n", "kernel", "case", "checked", "bit-exact", "max err", "err ratio", "result", strings.Join(rows, "\n")))
}

func ratioString(d solverDiff) string {
	if d.err == 0 {
		return "0"
	}
	return fmt.Sprintf("%.3g", d.ratio)
}

// bitDiffs counts the elements of two float32 slices that are not the same
// bits (a length mismatch counts as all).
func bitDiffs(a, b []float32) int {
	if len(a) != len(b) {
		return max(len(a), len(b))
	}
	n := 0
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			n++
		}
	}
	return n
}

// solverDiff is one output against the reference pair: err = max|got −
// ref64|, refErr = max|ref32 − ref64|, ratio = err / max(refErr, floor),
// and whether got is ref32 bit for bit.
type solverDiff struct {
	err, refErr, floor, ratio float64
	mismatches                int
	exact, pass               bool
}

func (d solverDiff) String() string {
	return fmt.Sprintf("error %.3g = %.3g× the reference's own (%.3g, floor %.3g; bound %d×), %d elements not bit-identical",
		d.err, d.ratio, d.refErr, d.floor, solverErrorBound, d.mismatches)
}

// golden reads a solver vectors file, float64 tensors included (the tensor
// layer has no float64).
type golden struct {
	path string
	st   safetensors.SafeTensors
	meta map[string]string
}

func openGolden(path string) (*golden, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	st, err := safetensors.Deserialize(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	_, header, err := safetensors.ReadMetadata(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &golden{path: path, st: st, meta: header.Metadata()}, nil
}

func (g *golden) raw(t *testing.T, key string) ([]byte, []int64) {
	t.Helper()
	v, ok := g.st.Tensor(key)
	if !ok {
		t.Fatalf("%s: no tensor %q", g.path, key)
	}
	shape := make([]int64, len(v.Shape()))
	for i, d := range v.Shape() {
		shape[i] = int64(d)
	}
	return v.Data(), shape
}

// float64s reads a F64, F32 or I64 tensor's values as float64.
func (g *golden) float64s(t *testing.T, key string) []float64 {
	t.Helper()
	v, _ := g.st.Tensor(key)
	b, _ := g.raw(t, key)
	var out []float64
	switch v.DType() {
	case safetensors.F64:
		for i := 0; i+8 <= len(b); i += 8 {
			out = append(out, math.Float64frombits(binary.LittleEndian.Uint64(b[i:])))
		}
	case safetensors.F32:
		for i := 0; i+4 <= len(b); i += 4 {
			out = append(out, float64(math.Float32frombits(binary.LittleEndian.Uint32(b[i:]))))
		}
	case safetensors.I64:
		for i := 0; i+8 <= len(b); i += 8 {
			out = append(out, float64(int64(binary.LittleEndian.Uint64(b[i:]))))
		}
	default:
		t.Fatalf("%s: %s has dtype %s", g.path, key, v.DType())
	}
	return out
}

func (g *golden) float32s(t *testing.T, key string) []float32 {
	t.Helper()
	v, _ := g.st.Tensor(key)
	b, _ := g.raw(t, key)
	if v.DType() != safetensors.F32 {
		t.Fatalf("%s: %s has dtype %s, want F32", g.path, key, v.DType())
	}
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

// load makes a float32 tensor of a F32 input.
func (g *golden) load(t *testing.T, s *tensor.Scope, key string) *tensor.Tensor {
	t.Helper()
	_, shape := g.raw(t, key)
	return s.FromFloat32(g.float32s(t, key), shape...)
}

// check measures got against output key (float32) and its ref64 twin.
func (g *golden) check(t *testing.T, s *tensor.Scope, key string, got *tensor.Tensor) solverDiff {
	t.Helper()
	want := g.float32s(t, key)
	exactRef := g.float64s(t, "ref64."+strings.TrimPrefix(key, "output."))
	_, shape := g.raw(t, key)
	if s.Err() != nil {
		t.Fatalf("%s: %v", key, s.Err())
	}
	if !slices.Equal(got.Shape(), shape) {
		t.Fatalf("%s: shape %v, want %v", key, got.Shape(), shape)
	}
	gv := s.Float32s(got)
	if len(exactRef) != len(want) || len(gv) != len(want) {
		t.Fatalf("%s: %d values, reference %d, float64 reference %d", key, len(gv), len(want), len(exactRef))
	}
	d := solverDiff{mismatches: bitDiffs(gv, want)}
	scale := 0.0
	for i, e := range exactRef {
		d.err = math.Max(d.err, math.Abs(float64(gv[i])-e))
		d.refErr = math.Max(d.refErr, math.Abs(float64(want[i])-e))
		scale = math.Max(scale, math.Abs(e))
		if math.IsNaN(float64(gv[i])) || math.IsNaN(e) {
			d.err = math.Inf(1)
		}
	}
	d.floor = solverFloorRoundoffs * 0x1p-24 * scale
	if d.err > 0 {
		d.ratio = d.err / math.Max(d.refErr, d.floor)
	}
	d.exact = d.mismatches == 0
	d.pass = d.ratio <= solverErrorBound
	return d
}
