package conformance

import (
	"context"
	"encoding/json"
	"fmt"
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
// Both depend on libtorch's CPU kernel path, so generate_solvers.py writes
// one file per path (testdata/solvers/<ATEN_CPU_CAPABILITY>.safetensors) and
// this test reads the one for the path it runs under; make test and make
// conformance run it under each path the CPU has. Every output must pass
// the error model (ratio ≤ ErrorBound) and, beyond it, equal Refiners'
// float32 output bit for bit: the solvers repeat Refiners' float32
// operations, so a seed gives Refiners' latents. Seeded noise, the schedule
// and the timesteps are compared exactly.
func TestSolvers(t *testing.T) {
	capability, err := activeCapability()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", "solvers", capability+".safetensors")
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("no solver vectors for the %s kernel path (%v): make golden writes them for every path this CPU has", capability, err)
	}
	f, err := weights.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	meta := f.Metadata()
	if meta["capability"] != capability {
		t.Fatalf("%s was written under ATEN_CPU_CAPABILITY=%s", path, meta["capability"])
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
			if n := float32Mismatches(got, want); n > 0 {
				t.Errorf("schedule %s: %d of %d values differ from Refiners'", key, n, len(want))
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
			want, err := f.Bytes(fmt.Sprintf("randn.%d", i))
			if err != nil {
				t.Fatal(err)
			}
			var got []byte
			var shape []int64
			err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
				x := s.Randn(seed, dt, d.Shape...)
				got, shape = s.Bytes(x), x.Shape()
				return s.Err()
			})
			what := fmt.Sprintf("randn seed %d shape %v %s", seed, d.Shape, dt)
			switch {
			case err != nil:
				t.Errorf("%s: %v", what, err)
			case !slices.Equal(shape, d.Shape):
				t.Errorf("%s: shape %v", what, shape)
			case string(got) != string(want):
				t.Errorf("%s: values differ from torch's", what)
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
				} else {
					t.Errorf("%s: not Refiners' float32 output bit for bit (max abs %.3g)", what, d.MaxAbs)
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
	publishReport(t, fmt.Sprintf("== solvers and randn, %s kernel path\n", capability)+reportHeader("case")+strings.Join(rows, "\n")+"\n")
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

// float32Mismatches counts the float32 values that differ from want (whose
// values must be float32 values, widened).
func float32Mismatches(got []float32, want []float64) int {
	if len(got) != len(want) {
		return max(len(got), len(want))
	}
	n := 0
	for i := range got {
		if float64(got[i]) != want[i] {
			n++
		}
	}
	return n
}

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
