package weights

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core/tensor"
)

// streams makes Streams over fixed byte slices and records, for each
// call, how many tensors were held at once and how often each was
// released.
type streamLog struct {
	held, maxHeld int
	released      map[string]int
	asked         []string
}

func (l *streamLog) stream(key string, dt tensor.DType, shape []int64, b []byte, fail error) Stream {
	return Stream{DType: dt, Shape: shape, Bytes: func() ([]byte, func(), error) {
		l.asked = append(l.asked, key)
		l.held++
		l.maxHeld = max(l.maxHeld, l.held)
		release := func() { l.held--; l.released[key]++ }
		if fail != nil {
			return nil, release, fail
		}
		return b, release, nil
	}}
}

func TestSaveStream(t *testing.T) {
	l := &streamLog{released: map[string]int{}}
	a := []byte{1, 0, 0, 0, 2, 0, 0, 0}
	b := []byte{0x3c, 0x00, 0x00, 0xbc}
	c := []byte{7, 0, 0, 0, 0, 0, 0, 0}
	path := filepath.Join(t.TempDir(), "out.safetensors")
	err := SaveStream(path, map[string]Stream{
		"a": l.stream("a", tensor.Float32, []int64{2}, a, nil),
		"b": l.stream("b", tensor.Float16, []int64{1, 2}, b, nil),
		"c": l.stream("c", tensor.Int64, []int64{}, c, nil),
	}, map[string]string{"source": "test"})
	if err != nil {
		t.Fatal(err)
	}
	if l.maxHeld != 1 {
		t.Errorf("%d tensors held at once, want 1", l.maxHeld)
	}
	for _, k := range []string{"a", "b", "c"} {
		if l.released[k] != 1 {
			t.Errorf("%s released %d times", k, l.released[k])
		}
	}
	f := mustOpen(t, path)
	for key, want := range map[string][]byte{"a": a, "b": b, "c": c} {
		got, err := f.Bytes(key)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %v %v, want %v", key, got, err, want)
		}
	}
	if f.Metadata()["source"] != "test" {
		t.Errorf("metadata %v", f.Metadata())
	}
}

func TestSaveStreamFailuresLeaveNoFile(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name    string
		streams func(l *streamLog) map[string]Stream
		want    string
	}{
		{"bytes fail", func(l *streamLog) map[string]Stream {
			return map[string]Stream{
				"a": l.stream("a", tensor.Float32, []int64{1}, []byte{0, 0, 0, 0}, nil),
				"b": l.stream("b", tensor.Float32, []int64{1}, nil, boom),
				"c": l.stream("c", tensor.Float32, []int64{1}, []byte{0, 0, 0, 0}, nil),
			}
		}, "key b: boom"},
		{"wrong length", func(l *streamLog) map[string]Stream {
			return map[string]Stream{"a": l.stream("a", tensor.Float32, []int64{2}, []byte{0, 0, 0, 0}, nil)}
		}, "key a: 4 bytes for float32 [2], want 8"},
		{"reserved key", func(l *streamLog) map[string]Stream {
			return map[string]Stream{"__metadata__": l.stream("x", tensor.Float32, []int64{1}, []byte{0, 0, 0, 0}, nil)}
		}, "key __metadata__: reserved for metadata"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "out.safetensors")
			old := rawFile("{}      ", 0)
			if err := os.WriteFile(path, old, 0o644); err != nil {
				t.Fatal(err)
			}
			l := &streamLog{released: map[string]int{}}
			err := SaveStream(path, tc.streams(l), nil)
			if err == nil || !strings.HasSuffix(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
				t.Errorf("SaveStream: %v, want ...%q", err, tc.want)
			}
			if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, old) {
				t.Errorf("old file changed: %q, %v", got, err)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 1 {
				t.Errorf("directory holds %d files, want 1", len(entries))
			}
			if l.held != 0 {
				t.Errorf("%d tensors never released", l.held)
			}
			// Nothing is asked for after the failure.
			if tc.name == "bytes fail" && strings.Join(l.asked, ",") != "a,b" {
				t.Errorf("asked for %v", l.asked)
			}
		})
	}
}

func TestWriteStreamCommitDiscard(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.safetensors")
	l := &streamLog{released: map[string]int{}}
	one := map[string]Stream{"w": l.stream("w", tensor.Float32, []int64{1}, []byte{0, 0, 128, 63}, nil)}
	p, err := WriteStream(path, one, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("file in place before Commit: %v", err)
	}
	p.Discard()
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("Discard left %d files", len(entries))
	}
	p, err = WriteStream(path, one, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	if v, err := mustOpen(t, path).Scalar("w"); err != nil || v != 1 {
		t.Errorf("committed file: %v %v", v, err)
	}
}

func TestBorrow(t *testing.T) {
	path, want := saveRoundTripFile(t, nil)
	f := mustOpen(t, path)
	for key, w := range want {
		b, release, err := f.Borrow(key)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, w.bytes) {
			t.Errorf("%s: borrowed bytes differ", key)
		}
		release()
		release() // idempotent
		// The pages were dropped from this process, not the data: a second
		// borrow reads the same bytes.
		b, release, _ = f.Borrow(key)
		if !bytes.Equal(b, w.bytes) {
			t.Errorf("%s: bytes differ after release", key)
		}
		release()
	}
	if _, _, err := f.Borrow("nope"); err == nil {
		t.Error("borrowed a missing key")
	}
	f.Close()
	if _, _, err := f.Borrow("f32"); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Borrow after Close: %v", err)
	}
}
