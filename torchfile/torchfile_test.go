package torchfile

import (
	"bytes"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/nlpodyssey/safetensors"
)

// The files in testdata are written by PyTorch (testdata/generate.py);
// expected.safetensors holds the same tensors, contiguous.

func expected(t *testing.T) safetensors.SafeTensors {
	t.Helper()
	raw, err := os.ReadFile("testdata/expected.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	st, err := safetensors.Deserialize(raw)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestReadsWhatPyTorchWrote checks every tensor of the zip, legacy and
// deflated files, bit for bit, against the same tensors saved as
// safetensors: dtypes, shapes, non-contiguous and shared-storage views,
// 0-d and empty tensors, nested containers.
func TestReadsWhatPyTorchWrote(t *testing.T) {
	want := expected(t)
	for _, tc := range []struct {
		file       string
		legacy     bool
		contiguous bool // contiguous tensors are read in place
	}{
		{"state_dict.pt", false, true},
		{"legacy.pt", true, true},
		{"compressed.pt", false, false},
	} {
		t.Run(tc.file, func(t *testing.T) {
			f, err := Open(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if f.Legacy() != tc.legacy {
				t.Errorf("Legacy() = %v", f.Legacy())
			}
			named, leaves, err := Flatten(f.Root())
			if err != nil {
				t.Fatal(err)
			}
			var keys []string
			for _, n := range named {
				keys = append(keys, n.Key)
			}
			if wk := want.Names(); !sameSet(keys, wk) {
				t.Fatalf("keys %v, want %v", keys, wk)
			}
			if len(leaves) != 0 {
				t.Errorf("unexpected leaves %v", leaves)
			}
			for _, n := range named {
				w, _ := want.Tensor(n.Key)
				if string(n.Tensor.DType) != w.DType().String() {
					t.Errorf("%s: dtype %s, want %s", n.Key, n.Tensor.DType, w.DType())
				}
				shape := make([]uint64, len(n.Tensor.Shape))
				for i, d := range n.Tensor.Shape {
					shape[i] = uint64(d)
				}
				if !slices.Equal(shape, w.Shape()) {
					t.Errorf("%s: shape %v, want %v", n.Key, n.Tensor.Shape, w.Shape())
				}
				b, release, err := n.Tensor.Bytes()
				if err != nil {
					t.Fatalf("%s: %v", n.Key, err)
				}
				if !bytes.Equal(b, w.Data()) {
					t.Errorf("%s: bytes differ", n.Key)
				}
				inPlace := len(b) > 0 && f.inMapping(b)
				if tc.contiguous && n.Tensor.Contiguous() && len(b) > 0 && !inPlace {
					t.Errorf("%s: contiguous tensor was copied, not read in place", n.Key)
				}
				if !n.Tensor.Contiguous() && inPlace {
					t.Errorf("%s: non-contiguous tensor returned as a view", n.Key)
				}
				release()
				release() // idempotent
			}
		})
	}
}

func (f *File) inMapping(b []byte) bool {
	base := uintptr(unsafe.Pointer(unsafe.SliceData(f.data)))
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	return p >= base && p < base+uintptr(len(f.data))
}

func sameSet(a, b []string) bool {
	a, b = slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b))
	return slices.Equal(a, b)
}

// TestStateDictMetadata: a module's state dict is an OrderedDict whose
// _metadata attribute torch.save sets with BUILD.
func TestStateDictMetadata(t *testing.T) {
	f, err := Open("testdata/state_dict.pt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lin, _ := f.Root().(*Dict).Get("linear")
	d := lin.(*Dict)
	if got := d.Keys(); !slices.Equal(got, []any{"weight", "bias"}) {
		t.Errorf("keys %v, want weight, bias in order", got)
	}
	if d.Attrs == nil {
		t.Fatal("no _metadata attribute")
	}
	meta, _ := d.Attrs.Get("_metadata")
	root, _ := meta.(*Dict).Get("")
	if v, _ := root.(*Dict).Get("version"); v != int64(1) {
		t.Errorf("_metadata[''][version] = %v, want 1", v)
	}
}

// TestCheckpoint reads a Lightning-style checkpoint: refused while its
// callback class is unknown, read with the class declared inert, every
// plain value decoded.
func TestCheckpoint(t *testing.T) {
	const cb = "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
	_, err := Open("testdata/checkpoint.ckpt")
	var refused *RefusedError
	if !errors.As(err, &refused) || refused.Global != cb {
		t.Fatalf("Open = %v, want a refusal of %s", err, cb)
	}
	f, err := OpenWith("testdata/checkpoint.ckpt", Options{Inert: []string{cb}})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	named, leaves, err := Flatten(f.Root())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, n := range named {
		keys = append(keys, n.Key)
	}
	if !slices.Equal(keys, []string{"state_dict.model.w", "state_dict.model.b"}) {
		t.Errorf("tensors %v", keys)
	}
	big70 := new(big.Int).Lsh(big.NewInt(1), 70)
	got := map[string]any{}
	for _, l := range leaves {
		got[l.Key] = l.Value
	}
	for key, want := range map[string]any{
		"global_step": int64(840000), "epoch": int64(6), "pytorch-lightning_version": "1.4.2", "lr": 1.5e-4,
		"neg": int64(-(1 << 40)), "flags.0": true, "flags.1": false, "flags.2": nil, "pair.0": int64(1), "pair.1": "two",
	} {
		if v, ok := got[key]; !ok || v != want {
			t.Errorf("%s = %#v, want %#v", key, got[key], want)
		}
	}
	if b, ok := got["big"].(*big.Int); !ok || b.Cmp(big70) != 0 {
		t.Errorf("big = %v, want 2**70", got["big"])
	}
	if b, ok := got["blob"].([]byte); !ok || string(b) != "\x00\xffbytes" {
		t.Errorf("blob = %#v", got["blob"])
	}
	obj, ok := got["callbacks.ModelCheckpoint"].(*Object)
	if !ok || obj.Class.String() != cb {
		t.Fatalf("callback = %#v", got["callbacks.ModelCheckpoint"])
	}
	state := obj.State.(*Dict)
	if v, _ := state.Get("monitor"); v != "val/loss" {
		t.Errorf("callback state monitor = %v", v)
	}
}

const sentinel = "/tmp/refiners-go-torchfile-pwned"

// TestHostile: pickles that call os.system, eval and subprocess.Popen (each
// creates a file when Python loads it) are refused by name, and nothing
// happens.
func TestHostile(t *testing.T) {
	os.Remove(sentinel)
	for _, tc := range []struct{ file, global string }{
		{"hostile_system.pt", "posix.system"},
		{"hostile_eval.pkl", "__builtin__.eval"}, // protocol 2 spells builtins so
		{"hostile_popen.pt", "subprocess.Popen"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			f, err := Open(filepath.Join("testdata", tc.file))
			if err == nil {
				f.Close()
				t.Fatal("opened a hostile pickle")
			}
			var refused *RefusedError
			if !errors.As(err, &refused) || refused.Global != tc.global {
				t.Fatalf("error %v, want a refusal of %s", err, tc.global)
			}
			if !strings.Contains(err.Error(), tc.global) || !strings.Contains(err.Error(), tc.file) {
				t.Errorf("error %q should name the file and %s", err, tc.global)
			}
			// Declaring it inert does not make it callable data either: a
			// function is never run, only recorded.
			f, err = OpenWith(filepath.Join("testdata", tc.file), Options{Inert: []string{tc.global}})
			if err == nil {
				named, leaves, _ := Flatten(f.Root())
				f.Close()
				if len(named) != 0 || len(leaves) != 1 {
					t.Errorf("inert record: %v %v", named, leaves)
				}
			}
			if _, err := os.Stat(sentinel); err == nil {
				t.Fatalf("%s exists: the pickle ran", sentinel)
			}
		})
	}
}

func TestTensorPastItsStorage(t *testing.T) {
	_, err := Open("testdata/hostile_tensor.pt")
	if err == nil || !strings.Contains(err.Error(), "size [40 6]") || !strings.Contains(err.Error(), "storage 0") {
		t.Fatalf("error %v, want the size checked against the storage", err)
	}
}

// TestTruncated cuts each good file at many lengths: every cut is refused
// with an error naming the file, and none panics.
func TestTruncated(t *testing.T) {
	for _, name := range []string{"state_dict.pt", "legacy.pt", "checkpoint.ckpt"} {
		raw, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		for _, n := range []int{0, 1, 2, 10, 100, len(raw) / 3, len(raw) / 2, len(raw) - 200, len(raw) - 22, len(raw) - 1} {
			p := filepath.Join(dir, name)
			if err := os.WriteFile(p, raw[:n], 0o644); err != nil {
				t.Fatal(err)
			}
			f, err := OpenWith(p, Options{Inert: []string{"pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"}})
			if err == nil {
				f.Close()
				t.Errorf("%s cut to %d of %d bytes: opened", name, n, len(raw))
				continue
			}
			if !strings.Contains(err.Error(), p) {
				t.Errorf("%s cut to %d: error %q does not name the file", name, n, err)
			}
		}
	}
}

// TestBytesAfterClose: a closed file refuses to hand out bytes.
func TestBytesAfterClose(t *testing.T) {
	f, err := Open("testdata/state_dict.pt")
	if err != nil {
		t.Fatal(err)
	}
	named, _, err := Flatten(f.Root())
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := named[0].Tensor.Bytes(); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Bytes after Close: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestNotTorch refuses files that are not torch files.
func TestNotTorch(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"text.pt":  "hello world",
		"empty.pt": "",
		"zip.pt":   "PK\x05\x06" + strings.Repeat("\x00", 18),
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o644)
		if f, err := Open(p); err == nil {
			f.Close()
			t.Errorf("%s: opened", name)
		}
	}
}

// FuzzParse: no input makes the reader panic or read outside the file.
func FuzzParse(f *testing.F) {
	for _, name := range []string{"state_dict.pt", "legacy.pt", "checkpoint.ckpt", "hostile_eval.pkl", "compressed.pt"} {
		raw, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		tf := &File{path: "fuzz", data: data, storages: map[string]*Storage{}}
		if tf.parse(Options{}) != nil {
			return
		}
		named, _, err := Flatten(tf.root)
		if err != nil {
			return
		}
		for _, n := range named {
			if _, release, err := n.Tensor.Bytes(); err == nil {
				release()
			}
		}
	})
}
