package core

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
)

func TestStateDictSaveLoadRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "model.safetensors")
	run(t, func(s *tensor.Scope) error {
		a, b := runnable(), runnable()
		if err := InitRandom(s, a, 1); err != nil {
			return err
		}
		defer ReleaseParams(a)
		if err := SaveState(s, a, path, map[string]string{"what": "test"}); err != nil {
			return err
		}
		f, err := weights.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		r, err := LoadState(s, b, f, LoadOptions{Strict: true})
		if err != nil {
			return err
		}
		defer ReleaseParams(b)
		if len(r.Loaded) != len(StateDict(a)) || !r.OK() {
			t.Errorf("report: %s", r)
		}
		for i, e := range StateDict(a) {
			if !bytes.Equal(s.Bytes(*e.Value), s.Bytes(*StateDict(b)[i].Value)) {
				t.Errorf("%s differs after save and load", e.Key)
			}
		}
		return s.Err()
	})
}

func TestLoadStateReportsAndChangesNothingOnFailure(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bad.safetensors")
	run(t, func(s *tensor.Scope) error {
		// A file with one good key, one mis-shaped key, one extra key, and
		// nothing for the rest of the model.
		err := weights.Save(s, path, map[string]*tensor.Tensor{
			"Linear_1.weight": s.Zeros(tensor.Float32, 8, 4),
			"Linear_1.bias":   s.Zeros(tensor.Float32, 9),
			"Extra.weight":    s.Zeros(tensor.Float32, 2),
		}, nil)
		if err != nil {
			return err
		}
		m := runnable()
		if err := InitRandom(s, m, 5); err != nil {
			return err
		}
		defer ReleaseParams(m)
		before := map[string][]byte{}
		for _, e := range StateDict(m) {
			before[e.Key] = s.Bytes(*e.Value)
		}
		f, err := weights.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()

		r, err := LoadState(s, m, f, LoadOptions{Strict: true})
		if err == nil {
			t.Fatal("strict load of a mismatched file succeeded")
		}
		msg := err.Error()
		for _, want := range []string{path, "Linear_1.bias: model wants shape [8], file has [9]", "unexpected (in file, not in model):\n    Extra.weight", "Linear_2.weight"} {
			if !strings.Contains(msg, want) {
				t.Errorf("strict error lacks %q:\n%s", want, msg)
			}
		}
		if len(r.Missing) != len(StateDict(m))-2 {
			t.Errorf("%d missing, want %d", len(r.Missing), len(StateDict(m))-2)
		}
		for _, e := range StateDict(m) {
			if !bytes.Equal(before[e.Key], s.Bytes(*e.Value)) {
				t.Errorf("failed strict load changed %s", e.Key)
			}
		}
		// Non-strict: loads what matches, reports the rest.
		r, err = LoadState(s, m, f, LoadOptions{})
		if err != nil {
			return err
		}
		if len(r.Loaded) != 1 || r.Loaded[0] != "Linear_1.weight" || len(r.Mismatched) != 1 || len(r.Unexpected) != 1 {
			t.Errorf("non-strict report: %s", r)
		}
		w, _ := m.Layer("Linear_1")
		if got := s.Float32s(w.(*Linear).Weight); got[0] != 0 {
			t.Errorf("matching key not loaded: %v", got[:2])
		}
		return s.Err()
	})
}

func TestLoadFromBrokenFileNamesFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "model.safetensors")
	run(t, func(s *tensor.Scope) error {
		m := NewLinear(4, 2, true)
		if err := InitRandom(s, m, 2); err != nil {
			return err
		}
		defer ReleaseParams(m)
		if err := SaveState(s, m, path, nil); err != nil {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		cases := map[string][]byte{
			"truncated":  data[:len(data)-5],
			"bad header": append([]byte{8, 0, 0, 0, 0, 0, 0, 0}, []byte("{not json")...),
		}
		for name, b := range cases {
			p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".safetensors")
			if err := os.WriteFile(p, b, 0o644); err != nil {
				return err
			}
			_, err := weights.Open(p)
			if err == nil || !strings.Contains(err.Error(), p) {
				t.Errorf("%s: error %v does not name the file", name, err)
			}
		}
		return nil
	})
}

func TestToDTypeConvertsLoadedWeights(t *testing.T) {
	run(t, func(s *tensor.Scope) error {
		m := runnable()
		if err := InitRandom(s, m, 3); err != nil {
			return err
		}
		defer ReleaseParams(m)
		if err := ToDType(s, m, tensor.BFloat16); err != nil {
			return err
		}
		for _, e := range StateDict(m) {
			if (*e.Value).DType() != tensor.BFloat16 || e.DType != tensor.BFloat16 {
				t.Errorf("%s is %s", e.Key, (*e.Value).DType())
			}
		}
		if !strings.Contains(m.String(), "dtype=bfloat16") {
			t.Error("tree print does not show the new dtype")
		}
		out := mustForward(t, s, m, s.ToDType(s.FromFloat32(make([]float32, 8), 2, 4), tensor.BFloat16))
		if out.DType() != tensor.BFloat16 {
			t.Errorf("output dtype %s", out.DType())
		}
		return s.Err()
	})
}

// TestChainOwnParams: a chain's own parameters are keyed under its path,
// before its children's, and load, save and change dtype like a layer's.
func TestChainOwnParams(t *testing.T) {
	path := filepath.Join(t.TempDir(), "own.safetensors")
	build := func() (*Chain, **tensor.Tensor) {
		held := new(*tensor.Tensor)
		inner := NewNamed("Holder", Sequence, NewLinear(2, 3, false))
		inner.Own = []Param{{Name: "extra", Shape: []int64{1, 4}, Value: held}}
		return NewChain(NewLinear(3, 2, true), inner), held
	}
	run(t, func(s *tensor.Scope) error {
		a, aHeld := build()
		var keys []string
		for _, e := range StateDict(a) {
			keys = append(keys, e.Key)
		}
		if got, want := strings.Join(keys, " "), "Linear.weight Linear.bias Holder.extra Holder.Linear.weight"; got != want {
			t.Errorf("keys %s, want %s", got, want)
		}
		if err := InitRandom(s, a, 3); err != nil {
			return err
		}
		defer ReleaseParams(a)
		if err := SaveState(s, a, path, nil); err != nil {
			return err
		}
		f, err := weights.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		b, bHeld := build()
		if _, err := LoadState(s, b, f, LoadOptions{Strict: true}); err != nil {
			return err
		}
		defer ReleaseParams(b)
		if !bytes.Equal(s.Bytes(*aHeld), s.Bytes(*bHeld)) {
			t.Error("own parameter differs after save and load")
		}
		if err := ToDType(s, b, tensor.BFloat16); err != nil {
			return err
		}
		if got := (*bHeld).DType(); got != tensor.BFloat16 {
			t.Errorf("own parameter is %s after ToDType(bfloat16)", got)
		}
		if got := StateDict(b)[2].DType; got != tensor.BFloat16 {
			t.Errorf("own parameter declared %s after ToDType(bfloat16)", got)
		}
		return s.Err()
	})
}

// A model whose dtype differs from the file's loads cast copies (the file
// is float32, the model bfloat16), with the same values as casting the
// float32 weights; the file's own views are dropped.
func TestLoadStateCastsFromAView(t *testing.T) {
	path := filepath.Join(t.TempDir(), "model.safetensors")
	run(t, func(s *tensor.Scope) error {
		a, b := runnable(), runnable()
		if err := InitRandom(s, a, 4); err != nil {
			return err
		}
		defer ReleaseParams(a)
		if err := SaveState(s, a, path, nil); err != nil {
			return err
		}
		f, err := weights.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := ToDType(s, b, tensor.BFloat16); err != nil {
			return err
		}
		before := tensor.Created()
		if _, err := LoadState(s, b, f, LoadOptions{Strict: true}); err != nil {
			return err
		}
		defer ReleaseParams(b)
		if s.Live() != 0 {
			t.Errorf("%d tensors left in the scope after loading (of %d made)", s.Live(), tensor.Created()-before)
		}
		for i, e := range StateDict(b) {
			want := s.Bytes(s.ToDType(*StateDict(a)[i].Value, tensor.BFloat16))
			if (*e.Value).DType() != tensor.BFloat16 || !bytes.Equal(s.Bytes(*e.Value), want) {
				t.Errorf("%s: %s, values differ from the cast float32 weights", e.Key, (*e.Value).DType())
			}
		}
		return s.Err()
	})
}
