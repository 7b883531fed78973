package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/refiners-go/refiners/internal/atomicfile"
)

// The tiny U-Net conformance case holds a real SD 1.5 U-Net (small widths)
// under the "param." prefix.
const (
	unetSpec    = "../specs/sd15_unet.yaml"
	unetWeights = "../conformance/testdata/specs/sd15_unet_tiny.safetensors"
	clipSpec    = "../specs/clip_text.yaml"
	clipWeights = "../conformance/testdata/specs/clip_text_tiny.safetensors"
)

var (
	unetTiny = map[string]string{"in_channels": "4", "out_channels": "4", "channels_1": "4", "channels_2": "8", "channels_3": "12",
		"sinusoidal_embedding_dim": "8", "timestep_embedding_dim": "16", "clip_embedding_dim": "8", "num_heads": "2", "num_groups": "2"}
	clipTiny = map[string]string{"embedding_dim": "32", "max_sequence_length": "16", "vocabulary_size": "100",
		"num_layers": "2", "num_attention_heads": "4", "feedforward_dim": "128"}
)

func digestOf(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(h[:])
}

func open(t *testing.T) *Store {
	t.Helper()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestAddModelStoresSpecAndWeightsByDigest(t *testing.T) {
	s := open(t)
	m, err := s.AddModel("clip-tiny", clipSpec, clipWeights, clipTiny, "param.")
	if err != nil {
		t.Fatal(err)
	}
	if m.Weights.Digest != digestOf(t, clipWeights) || m.Spec != "clip_text.yaml" {
		t.Errorf("manifest: %+v", m)
	}
	for rel, d := range m.SpecFiles {
		if d != digestOf(t, filepath.Join("../specs", rel)) {
			t.Errorf("%s: digest %s", rel, d)
		}
	}
	got, err := s.Model("clip-tiny")
	if err != nil || got.Weights != m.Weights {
		t.Fatalf("Model: %+v, %v", got, err)
	}
	sp, err := s.LoadSpec(got)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sp.Build(got.Overrides); err != nil {
		t.Fatal(err)
	}
	if p, err := s.BlobPath(m.Weights.Digest); err != nil || digestOf(t, p) != m.Weights.Digest {
		t.Errorf("BlobPath: %s, %v", p, err)
	}
}

func TestSpecWithImportsRoundTrips(t *testing.T) {
	s := open(t)
	m, err := s.AddModel("unet", unetSpec, unetWeights, unetTiny, "param.")
	if err != nil {
		t.Fatal(err)
	}
	if len(m.SpecFiles) != 2 || m.SpecFiles["sd15_unet_blocks.yaml"] == "" {
		t.Errorf("spec files %v: want the spec and its import", m.SpecFiles)
	}
	sp, err := s.LoadSpec(m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sp.Build(m.Overrides); err != nil {
		t.Fatal(err)
	}
}

func TestBadNamesAndDigestsAreRefused(t *testing.T) {
	s := open(t)
	for _, name := range []string{"", "../x", "a/b", "..", ".", ".hidden", "A", "x..y", "a\\b", "a\x00", strings.Repeat("a", 65), "name.json/.."} {
		if _, err := s.AddModel(name, clipSpec, clipWeights, clipTiny, "param."); !errors.Is(err, ErrInvalid) {
			t.Errorf("AddModel(%q): %v; want ErrInvalid", name, err)
		}
		if _, err := s.Model(name); !errors.Is(err, ErrInvalid) {
			t.Errorf("Model(%q): %v", name, err)
		}
		if err := s.RemoveAdapter(name); !errors.Is(err, ErrInvalid) {
			t.Errorf("RemoveAdapter(%q): %v", name, err)
		}
	}
	for _, d := range []string{"", "sha256:", "sha256:../../etc/passwd", "md5:" + strings.Repeat("0", 32), "sha256:" + strings.Repeat("A", 64), "sha256:" + strings.Repeat("0", 63)} {
		if _, err := s.BlobPath(d); !errors.Is(err, ErrInvalid) {
			t.Errorf("BlobPath(%q): %v; want ErrInvalid", d, err)
		}
	}
	if _, err := s.BlobPath("sha256:" + strings.Repeat("0", 64)); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown blob: %v", err)
	}
	if _, err := s.Model("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown model: %v", err)
	}
}

func TestWeightsThatDoNotFitAreRefusedAndNothingIsKept(t *testing.T) {
	s := open(t)
	_, err := s.AddModel("x", clipSpec, unetWeights, clipTiny, "param.")
	if err == nil || !strings.Contains(err.Error(), "does not fit") {
		t.Fatalf("err = %v", err)
	}
	blobs, _ := os.ReadDir(filepath.Join(s.Root(), "blobs", "sha256"))
	models, _ := os.ReadDir(filepath.Join(s.Root(), "models"))
	if len(blobs)+len(models) != 0 {
		t.Errorf("left %d blobs and %d manifests", len(blobs), len(models))
	}
}

func TestPutBlobChecksDigestAndLimit(t *testing.T) {
	s := open(t)
	data := []byte("hello")
	h := sha256.Sum256(data)
	want := "sha256:" + hex.EncodeToString(h[:])
	if _, err := s.PutBlob(bytes.NewReader(data), "sha256:"+strings.Repeat("0", 64), 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("wrong digest: %v", err)
	}
	if _, err := s.PutBlob(bytes.NewReader(data), "", 4); err == nil || !strings.Contains(err.Error(), "larger than 4 bytes") {
		t.Errorf("over limit: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(s.Root(), "blobs", "sha256")); len(entries) != 0 {
		t.Errorf("refused uploads left %d files", len(entries))
	}
	b, err := s.PutBlob(bytes.NewReader(data), want, 5)
	if err != nil || b.Digest != want || b.Size != 5 {
		t.Fatalf("PutBlob: %+v, %v", b, err)
	}
}

func TestRemoveDeletesUnsharedBlobsOnly(t *testing.T) {
	s := open(t)
	if _, err := s.AddModel("a", clipSpec, clipWeights, clipTiny, "param."); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddModel("b", clipSpec, clipWeights, clipTiny, "param."); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddAdapter("lora", clipWeights); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		e, _ := os.ReadDir(filepath.Join(s.Root(), "blobs", "sha256"))
		return len(e)
	}
	if n := count(); n != 2 { // the spec and the weights, shared by all three
		t.Fatalf("%d blobs, want 2", n)
	}
	if err := s.RemoveModel("a"); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 2 {
		t.Errorf("after removing a: %d blobs, want 2 (b still uses them)", n)
	}
	if err := s.RemoveModel("b"); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 1 {
		t.Errorf("after removing b: %d blobs, want 1 (the adapter's)", n)
	}
	if err := s.RemoveAdapter("lora"); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 0 {
		t.Errorf("after removing everything: %d blobs", n)
	}
	if err := s.RemoveModel("a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second remove: %v", err)
	}
}

func TestOpenRemovesLeftoverTemporaryFiles(t *testing.T) {
	root := t.TempDir()
	if _, err := Open(root); err != nil {
		t.Fatal(err)
	}
	left := filepath.Join(root, "blobs", "sha256", atomicfile.TempPrefix+"123")
	if err := os.WriteFile(left, []byte("half"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(root); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(left); !os.IsNotExist(err) {
		t.Errorf("temporary file survived: %v", err)
	}
}

// TestAddModelFS stores a spec read from a file system (the binary's
// embedded specs): same files, same digests, same manifest as from disk.
func TestAddModelFS(t *testing.T) {
	s := open(t)
	fromDisk, err := s.AddModel("unet-disk", unetSpec, unetWeights, unetTiny, "param.")
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.AddModelFS("unet-fs", os.DirFS("../specs"), "sd15_unet.yaml", unetWeights, unetTiny, "param.")
	if err != nil {
		t.Fatal(err)
	}
	if m.Spec != fromDisk.Spec || !maps.Equal(m.SpecFiles, fromDisk.SpecFiles) || m.Weights.Digest != fromDisk.Weights.Digest {
		t.Errorf("from fs %+v, from disk %+v", m, fromDisk)
	}
	if _, err := s.AddModelFS("bad", os.DirFS("../specs"), "sd15_unet.yaml", clipWeights, unetTiny, "param."); err == nil {
		t.Error("weights that do not fit were stored")
	}
	if _, err := s.Model("bad"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Model(bad): %v", err)
	}
}

// TestReaddingAnOldUnusedBlobKeepsIt: a blob that no manifest names and
// that is older than the upload grace is collected at the next removal;
// adding it again must make it recent, or that removal (another
// replica's, say) could take it before the new manifest names it.
func TestReaddingAnOldUnusedBlobKeepsIt(t *testing.T) {
	s := open(t)
	old, _ := s.AddAdapter("old", clipWeights)
	if _, err := s.AddAdapter("other", unetWeights); err != nil {
		t.Fatal(err)
	}
	if err := s.be.Delete(t.Context(), "adapters/old.json"); err != nil { // unreferenced, as after a crash
		t.Fatal(err)
	}
	p := filepath.Join(s.Root(), filepath.FromSlash(blobKey(old.File.Digest)))
	long := time.Now().Add(-2 * uploadGrace)
	if err := os.Chtimes(p, long, long); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(clipWeights)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := s.PutBlob(f, old.File.Digest, 0); err != nil { // the upload before a new manifest
		t.Fatal(err)
	}
	if err := s.RemoveAdapter("other"); err != nil { // collects
		t.Fatal(err)
	}
	if _, err := s.BlobPath(old.File.Digest); err != nil {
		t.Errorf("the blob just uploaded again was collected: %v", err)
	}
}
