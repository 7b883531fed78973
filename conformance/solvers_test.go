package conformance

import (
	"context"
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

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/diffusion"
)

// TestSolvers checks diffusion's solvers (timesteps, every step,
// add_noise, scale_model_input, init sigma, the noise schedule) and
// tensor.Randn against Refiners 0.4.0 and torch 2.1.2.
//
// Both depend on libtorch's CPU kernel path (its float32 transcendentals
// differ in the last bits between paths), so generate_solvers.py writes one
// file per path it runs under (testdata/solvers/<ATEN_CPU_CAPABILITY>.safetensors),
// and every file is checked under the path the test runs on (make test and
// make conformance run each path the CPU has):
//   - the file of the same path: every output passes the error model and,
//     beyond it, equals Refiners' float32 output bit for bit (the solvers
//     repeat Refiners' float32 operations, so a seed gives Refiners'
//     latents); noise, schedule and timesteps exactly;
//   - a file of another path (on a CPU whose best path has no file, such as
//     AVX-512, every file): steps pass the error model; noise and schedule
//     agree within crossPathULPs; timesteps exactly.
func TestSolvers(t *testing.T) {
	capability, err := activeCapability()
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join("testdata", "solvers", "*.safetensors"))
	if len(files) == 0 {
		t.Fatal("no solver vectors in testdata/solvers (make golden writes them)")
	}
	var report strings.Builder
	for _, path := range files {
		written := strings.TrimSuffix(filepath.Base(path), ".safetensors")
		t.Run("vectors_"+written, func(t *testing.T) {
			report.WriteString(checkSolverFile(t, path, capability))
		})
	}
	publishReport(t, report.String())
}

// crossPathULPs bounds how far seeded noise and the schedule may move from
// one kernel path to another, in float32 epsilons times max(|value|, 1):
// measured between the default and AVX2 files, at most 13.3 (randn's
// Box-Muller through libm or SLEEF) and 1.8 (the schedule's log).
const crossPathULPs = 64

// checkSolverFile checks one per-path file under the running path and
// returns its report rows.
func checkSolverFile(t *testing.T, path, capability string) string {
	f, err := weights.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	meta := f.Metadata()
	written := meta["capability"]
	if written+".safetensors" != filepath.Base(path) {
		t.Fatalf("%s was written under ATEN_CPU_CAPABILITY=%s", path, written)
	}
	samePath := written == capability
	// values compares float32 values with Refiners': exactly on the same
	// path, within crossPathULPs on another; it returns the mismatches.
	values := func(got []float32, want []float64) int {
		if len(got) != len(want) {
			return max(len(got), len(want))
		}
		n := 0
		for i := range got {
			d := math.Abs(float64(got[i]) - want[i])
			if (samePath && d != 0) || d > crossPathULPs*0x1p-23*math.Max(math.Abs(want[i]), 1) {
				n++
			}
		}
		return n
	}

	var rows []string
	exactRow := func(name, what string, exact, total int) {
		status := "pass"
		if exact != total {
			status = "FAIL"
		}
		rows = append(rows, fmt.Sprintf("%-34s %-14s %-9s %-9s %-7s %-9s %s (exact: %d of %d)", name, what, "-", "-", "-", "-", status, exact, total))
	}

	t.Run("schedule", func(t *testing.T) {
		sch, err := diffusion.NoiseSchedule()
		if err != nil {
			t.Fatal(err)
		}
		exact := 0
		for key, got := range map[string][]float32{
			"cumulative_scale_factors": sch.CumulativeScaleFactors,
			"noise_std":                sch.NoiseStd,
			"signal_to_noise_ratios":   sch.SignalToNoiseRatios,
		} {
			want, _, err := f.Float64s("schedule." + key)
			if err != nil {
				t.Fatal(err)
			}
			if n := values(got, want); n > 0 {
				t.Errorf("schedule %s: %d of %d values differ from Refiners' (%s)", key, n, len(want), pathRule(samePath))
				continue
			}
			exact++
		}
		exactRow("schedule", "3 buffers", exact, 3)
	})

	t.Run("randn", func(t *testing.T) {
		var draws []struct {
			Seed  string  `json:"seed"`
			Shape []int64 `json:"shape"`
			DType string  `json:"dtype"`
		}
		if err := json.Unmarshal([]byte(meta["randn"]), &draws); err != nil || len(draws) == 0 {
			t.Fatalf("%s: randn metadata: %v", path, err)
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
			want, _, err := f.Float64s(fmt.Sprintf("randn.%d", i))
			if err != nil {
				t.Fatal(err)
			}
			var got []float32
			var shape []int64
			err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
				x := s.Randn(seed, dt, d.Shape...)
				got, shape = s.Float32s(x), x.Shape()
				return s.Err()
			})
			what := fmt.Sprintf("randn seed %d shape %v %s", seed, d.Shape, dt)
			switch {
			case err != nil:
				t.Errorf("%s: %v", what, err)
			case !slices.Equal(shape, d.Shape):
				t.Errorf("%s: shape %v", what, shape)
			case values(got, want) > 0:
				t.Errorf("%s: %d values differ from torch's (%s)", what, values(got, want), pathRule(samePath))
			default:
				exact++
			}
		}
		exactRow("randn", fmt.Sprintf("%d draws", len(draws)), exact, len(draws))
	})

	var cases []struct {
		Name      string `json:"name"`
		Solver    string `json:"solver"`
		Steps     int    `json:"steps"`
		FirstStep int    `json:"first_step"`
	}
	if err := json.Unmarshal([]byte(meta["cases"]), &cases); err != nil || len(cases) == 0 {
		t.Fatalf("%s: cases metadata: %v", path, err)
	}
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			sv, err := diffusion.NewSolver(c.Solver, c.Steps, c.FirstStep)
			if err != nil {
				t.Fatal(err)
			}
			defer sv.Close()
			exactRow(c.Name, "timesteps", checkTimesteps(t, f, c.Name, sv), 1)

			worst, exact, total := Diff{Pass: true}, 0, 0
			check := func(s *tensor.Scope, what string, got *tensor.Tensor) {
				if s.Err() != nil {
					t.Fatalf("%s: %v", what, s.Err())
				}
				ref, err := ReadReference(f, "output."+c.Name+"."+what)
				if err != nil {
					t.Fatal(err)
				}
				d := ref.Check(s, got)
				total++
				if !d.Pass {
					t.Errorf("%s: %s", what, d)
				}
				if bitExact(d) {
					exact++
				} else if samePath {
					t.Errorf("%s: not Refiners' float32 output bit for bit on the same kernel path (max abs %.3g)", what, d.MaxAbs)
				}
				if d.Ratio > worst.Ratio || !d.Pass || total == 1 {
					worst = d
				}
			}
			err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
				x := f.Load(s, "input."+c.Name+".x")
				if c.FirstStep > 0 && c.Solver != "euler" {
					x = sv.AddNoise(s, x, f.Load(s, "input."+c.Name+".noise"), c.FirstStep)
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
					next := sv.Step(step, x, f.Load(step, fmt.Sprintf("input.%s.eps.%d", c.Name, k)), k)
					check(step, fmt.Sprintf("step.%d", k), next)
					step.Close(next)
					x = next
				}
				return s.Err()
			})
			if err != nil {
				t.Fatal(err)
			}
			row := reportRow(c.Name, fmt.Sprintf("%d outputs", total), worst)
			rows = append(rows, fmt.Sprintf("%s (worst; bit-exact: %d of %d)", row, exact, total))
		})
	}
	slices.Sort(rows)
	return fmt.Sprintf("== solvers and randn: vectors written under %s, run under %s (%s)\n", written, capability, pathRule(samePath)) +
		reportHeader("case") + strings.Join(rows, "\n") + "\n"
}

func pathRule(samePath bool) string {
	if samePath {
		return "same kernel path: bit for bit"
	}
	return fmt.Sprintf("another kernel path: error model, noise and schedule within %d ulps", crossPathULPs)
}

// checkTimesteps compares the solver's timesteps with Refiners' exactly
// (int64 for DPM and DDIM, float32 for Euler); it returns 1 if they match.
func checkTimesteps(t *testing.T, f *weights.File, name string, sv diffusion.Solver) int {
	t.Helper()
	key := name + ".timesteps"
	info, ok := f.Info(key)
	if !ok {
		t.Fatalf("%s: no %s", f.Path(), key)
	}
	wantDType := tensor.Int64
	if sv.Name() == "euler" {
		wantDType = tensor.Float32
	}
	if info.DType != wantDType {
		t.Errorf("Refiners' %s timesteps are %s, want %s", sv.Name(), info.DType, wantDType)
	}
	var want []float64
	err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
		ts := f.Load(s, key)
		if info.DType == tensor.Int64 {
			for _, v := range s.Int64s(ts) {
				want = append(want, float64(v))
			}
		} else {
			for _, v := range s.Float32s(ts) {
				want = append(want, float64(v))
			}
		}
		return s.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]float64, sv.NumSteps())
	for i := range got {
		got[i] = sv.Timestep(i)
	}
	if !slices.Equal(got, want) {
		t.Errorf("timesteps %v, want %v", got, want)
		return 0
	}
	return 1
}

// bitExact reports whether a checked float32 output equals the reference's
// float32 output exactly.
func bitExact(d Diff) bool { return d.Total > 0 && d.MaxAbs == 0 }

// activeCapability is the kernel path libtorch runs under:
// ATEN_CPU_CAPABILITY when set, else the best the CPU has (the last line of
// scripts/cpu-capabilities.sh, the order in which ATen picks).
func activeCapability() (string, error) {
	if v := os.Getenv("ATEN_CPU_CAPABILITY"); v != "" {
		return v, nil
	}
	out, err := exec.Command("bash", filepath.Join("..", "scripts", "cpu-capabilities.sh")).Output()
	if err != nil {
		return "", fmt.Errorf("scripts/cpu-capabilities.sh: %w", err)
	}
	lines := strings.Fields(string(out))
	if len(lines) == 0 {
		return "", fmt.Errorf("scripts/cpu-capabilities.sh printed nothing")
	}
	return lines[len(lines)-1], nil
}
