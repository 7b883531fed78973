package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func blobOf(s string) (string, []byte) {
	h := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(h[:]), []byte(s)
}

func serve(b []byte, calls *atomic.Int64) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) {
		calls.Add(1)
		return io.NopCloser(bytes.NewReader(b)), nil
	}
}

// TestCacheEvictsLeastRecentlyUsed fills a 30-byte cache with 10-byte
// blobs: the one not used for the longest goes first.
func TestCacheEvictsLeastRecentlyUsed(t *testing.T) {
	c, err := OpenCache(t.TempDir(), 30)
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int64
	get := func(name string) {
		t.Helper()
		d, b := blobOf(fmt.Sprintf("%-10s", name))
		p, err := c.Path(d, 10, serve(b, &calls))
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(p); !bytes.Equal(got, b) {
			t.Fatalf("%s: read %q", name, got)
		}
	}
	steps := []struct {
		get       string
		downloads int64
	}{
		{"a", 1}, {"b", 2}, {"c", 3}, // full
		{"a", 3},                     // a is now the most recent
		{"d", 4},                     // evicts b
		{"a", 4}, {"c", 4}, {"d", 4}, // all held
		{"b", 5}, // evicts a (used before c and d)
		{"a", 6},
	}
	for i, s := range steps {
		get(s.get)
		if n := calls.Load(); n != s.downloads {
			t.Fatalf("step %d (get %s): %d downloads, want %d", i, s.get, n, s.downloads)
		}
	}
	if st := c.Stats(); st.Bytes != 30 || st.Evictions != 3 {
		t.Errorf("stats %+v: want 30 bytes held, 3 evictions", st)
	}
}

func TestCacheRefusesWrongContent(t *testing.T) {
	c, err := OpenCache(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := blobOf("right")
	cases := []struct {
		name  string
		fetch func() (io.ReadCloser, error)
		want  string
	}{
		{"other bytes", func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("wrong")), nil }, "refusing to cache"},
		{"cut short", func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("rig")), nil }, "refusing to cache"},
		{"fetch fails", func() (io.ReadCloser, error) { return nil, fmt.Errorf("x: %w", ErrNotFound) }, "not found"},
	}
	for _, tc := range cases {
		if _, err := c.Path(d, 5, tc.fetch); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want %q", tc.name, err, tc.want)
		}
	}
	if entries, _ := os.ReadDir(c.Dir()); len(entries) != 0 {
		t.Errorf("refused downloads left %d files", len(entries))
	}
	if _, err := c.Path("sha256:../x", 0, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad digest: %v", err)
	}
}

// TestCacheChecksFilesAnEarlierProcessLeft: a file whose content no longer
// matches its name is downloaded again; a good one is kept, with its place
// in the LRU order taken from its modification time.
func TestCacheChecksFilesAnEarlierProcessLeft(t *testing.T) {
	dir := t.TempDir()
	good, goodBytes := blobOf("good")
	bad, badBytes := blobOf("bad")
	os.WriteFile(filepath.Join(dir, strings.TrimPrefix(good, "sha256:")), goodBytes, 0o600)
	os.WriteFile(filepath.Join(dir, strings.TrimPrefix(bad, "sha256:")), []byte("rot"), 0o600)
	os.WriteFile(filepath.Join(dir, ".tmp-123"), []byte("half"), 0o600)
	c, err := OpenCache(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, ".tmp-123")); !os.IsNotExist(err) {
		t.Error("a temporary file survived")
	}
	var calls atomic.Int64
	if _, err := c.Path(good, 4, serve(goodBytes, &calls)); err != nil || calls.Load() != 0 {
		t.Errorf("good file: %v, %d downloads", err, calls.Load())
	}
	p, err := c.Path(bad, 3, serve(badBytes, &calls))
	if err != nil || calls.Load() != 1 {
		t.Fatalf("rotten file: %v, %d downloads", err, calls.Load())
	}
	if b, _ := os.ReadFile(p); !bytes.Equal(b, badBytes) {
		t.Errorf("rotten file not replaced: %q", b)
	}
}

func TestCacheDownloadsOncePerDigest(t *testing.T) {
	c, err := OpenCache(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	d, b := blobOf("shared")
	var calls atomic.Int64
	release := make(chan struct{})
	fetch := func() (io.ReadCloser, error) {
		calls.Add(1)
		<-release // every caller has asked by now: without deduplication, 8 downloads
		return io.NopCloser(bytes.NewReader(b)), nil
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			_, err := c.Path(d, int64(len(b)), fetch)
			errs <- err
		})
	}
	time.Sleep(200 * time.Millisecond)
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("%d downloads, want 1", n)
	}
}
