package weights

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core/tensor"
)

// mapped reports whether path is mapped into this process.
func mapped(t *testing.T, path string) bool {
	t.Helper()
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Skip("no /proc/self/maps:", err)
	}
	return strings.Contains(string(maps), path)
}

func floatFile(t *testing.T, values []float32) string {
	t.Helper()
	var path string
	run(t, func(s *tensor.Scope) error {
		path = t.TempDir() + "/w.safetensors"
		return Save(s, path, map[string]*tensor.Tensor{"w": s.FromFloat32(values, int64(len(values)))}, nil)
	})
	return path
}

// Loading from an opened file views its pages: no copy, the mapping lives
// on after Close while a view does, and goes with the last view.
func TestLoadViewsTheMapping(t *testing.T) {
	values := []float32{1, -2, 3.5, 4, 5, 6}
	path := floatFile(t, values)
	run(t, func(s *tensor.Scope) error {
		f, err := Open(path)
		if err != nil {
			return err
		}
		if !f.Views("w") {
			t.Fatal("Views(w) = false for an aligned float32 tensor of an opened file")
		}
		w := f.Load(s, "w")
		shallow := s.ShallowCopy(w)
		reshaped := s.Reshape(w, 2, 3)
		if err := s.Err(); err != nil {
			return err
		}
		if !f.mapping.SharesMemory(w) || !f.mapping.SharesMemory(reshaped) {
			t.Fatal("the loaded tensor does not view the mapped file")
		}
		// The File's reference plus the one storage all three handles share.
		if got := f.mapping.Refs(); got != 2 {
			t.Errorf("references with one viewed storage: %d, want 2", got)
		}
		other := f.Load(s, "w") // a second storage on the same bytes
		if got := f.mapping.Refs(); got != 3 {
			t.Errorf("references with two viewed storages: %d, want 3", got)
		}
		s.Release(other)
		if err := f.Close(); err != nil {
			return err
		}
		if !mapped(t, path) {
			t.Fatal("Close unmapped the file while tensors view it")
		}
		if got := s.Float32s(reshaped); !slicesEqual(got, values) {
			t.Errorf("values after Close = %v, want %v", got, values)
		}
		c := s.Child()
		if f.Load(c, "w"); c.Err() == nil || !strings.Contains(c.Err().Error(), "closed") {
			t.Errorf("Load after Close: err %v", c.Err())
		}
		c.TakeErr()
		c.Close()
		for _, h := range []*tensor.Tensor{w, shallow} {
			h.Drop()
		}
		if !mapped(t, path) {
			t.Fatal("unmapped while a reshaped view is alive")
		}
		reshaped.Drop()
		if mapped(t, path) {
			t.Error("still mapped after Close and the last view dropped")
		}
		return nil
	})
}

func slicesEqual(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

// A tensor whose bytes are not aligned for its dtype (a header whose length
// no writer would choose) is copied; so is every tensor of a parsed file,
// and of a file opened with OpenOptions.Copy.
func TestLoadCopiesWhenItCannotView(t *testing.T) {
	// Header of 7 bytes + 8-byte length: data starts at byte 15.
	header := `{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`
	for len(header)%8 != 7 {
		header += " "
	}
	raw := rawFile(header, 0)
	raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(1.5))
	raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(-3))
	unaligned := writeTemp(t, "unaligned.safetensors", raw)
	aligned := floatFile(t, []float32{1.5, -3})
	cases := []struct {
		name string
		open func() (*File, error)
	}{
		{"unaligned", func() (*File, error) { return Open(unaligned) }},
		{"parsed", func() (*File, error) {
			b, err := os.ReadFile(aligned)
			if err != nil {
				return nil, err
			}
			return Parse("parsed", b)
		}},
		{"copy option", func() (*File, error) { return OpenWith(aligned, OpenOptions{Copy: true}) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, err := c.open()
			if err != nil {
				t.Fatal(err)
			}
			if f.Views("w") {
				t.Error("Views(w) = true")
			}
			run(t, func(s *tensor.Scope) error {
				w := f.Load(s, "w")
				if f.mapping != nil && f.mapping.SharesMemory(w) {
					t.Error("the tensor views the file")
				}
				f.Close()
				if got := s.Float32s(w); !slicesEqual(got, []float32{1.5, -3}) {
					t.Errorf("values %v", got)
				}
				return nil
			})
		})
	}
}

// The mapping is read-only: a write through a viewed tensor faults (here
// in a child process) and the file keeps its bytes.
func TestWritingAViewFaults(t *testing.T) {
	if path := os.Getenv("WEIGHTS_WRITE_VIEW"); path != "" {
		run(t, func(s *tensor.Scope) error {
			f, err := Open(path)
			if err != nil {
				return err
			}
			w := f.Load(s, "w")
			s.CopyInto(w, s.Zeros(tensor.Float32, 2))
			return s.Err()
		})
		os.Exit(0) // not reached when the write faults
	}
	path := floatFile(t, []float32{7, 8})
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestWritingAViewFaults$")
	cmd.Env = append(os.Environ(), "WEIGHTS_WRITE_VIEW="+path)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("writing into a viewed weight did not fault:\n%s", out)
	}
	if !strings.Contains(string(out), "SIGSEGV") {
		t.Errorf("child failed, but not with SIGSEGV: %v\n%s", err, out)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Error("the file changed")
	}
}

// Evict lets the pages go from resident memory only: a live view reads the
// same values afterwards (from the file again).
func TestEvictKeepsValues(t *testing.T) {
	values := make([]float32, 5000) // several pages
	for i := range values {
		values[i] = float32(i) * 0.5
	}
	path := floatFile(t, values)
	run(t, func(s *tensor.Scope) error {
		f := mustOpen(t, path)
		w := f.Load(s, "w")
		f.Evict("w")
		f.Evict("missing") // nothing to do
		if got := s.Float32s(w); !slicesEqual(got, values) {
			t.Error("values changed after Evict")
		}
		return s.Err()
	})
}
