package store

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/refiners-go/refiners/internal/s3test"
)

// s3Server is one versitygw for the package's tests, started on first use
// (and built, the first time on a machine: minutes). A test that needs it
// fails, never skips, when it cannot start.
var s3Server = struct {
	once sync.Once
	srv  *s3test.Server
	err  error
	n    int
	mu   sync.Mutex
}{}

func TestMain(m *testing.M) {
	code := m.Run()
	if s3Server.srv != nil {
		s3Server.srv.Stop()
	}
	os.Exit(code)
}

// s3Store opens a store on a fresh bucket of the test server, with a
// cache of its own; a second call with the same bucket is a second replica.
func s3Store(t *testing.T, bucket string, cacheBytes int64) *Store {
	t.Helper()
	srv := s3ServerFor(t)
	s, err := OpenWith("s3://"+bucket+"/team/models", Options{CacheDir: t.TempDir(), CacheBytes: cacheBytes, Getenv: srv.Getenv})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func s3ServerFor(t *testing.T) *s3test.Server {
	t.Helper()
	s3Server.once.Do(func() {
		dir, err := os.MkdirTemp("", "refiners-s3test-")
		if err != nil {
			s3Server.err = err
			return
		}
		s3Server.srv, s3Server.err = s3test.Start(dir)
	})
	if s3Server.err != nil {
		t.Fatalf("the S3 test server (versitygw) did not start: %v", s3Server.err)
	}
	return s3Server.srv
}

func newBucket(t *testing.T) string {
	t.Helper()
	srv := s3ServerFor(t)
	s3Server.mu.Lock()
	s3Server.n++
	name := "bucket-" + strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(name) > 50 {
		name = name[:50]
	}
	name = strings.TrimRight(name, "-") + "-" + string(rune('a'+s3Server.n%26))
	s3Server.mu.Unlock()
	if err := srv.MakeBucket(name); err != nil {
		t.Fatal(err)
	}
	return name
}

// TestBackendsShareTheStoreLogic runs one scenario on a local folder and
// on S3: add, list, load the spec, read blobs, remove and collect.
func TestBackendsShareTheStoreLogic(t *testing.T) {
	cases := []struct {
		name string
		open func(t *testing.T) *Store
	}{
		{"disk", open},
		{"s3", func(t *testing.T) *Store { return s3Store(t, newBucket(t), 0) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := c.open(t)
			m, err := s.AddModel("unet", unetSpec, unetWeights, unetTiny, "param.")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.AddAdapter("lora", clipWeights); err != nil {
				t.Fatal(err)
			}
			ms, err := s.Models()
			if err != nil || len(ms) != 1 || ms[0].Name != "unet" || ms[0].Weights != m.Weights {
				t.Fatalf("Models: %v, %v", ms, err)
			}
			as, err := s.Adapters()
			if err != nil || len(as) != 1 || as[0].File.Digest != digestOf(t, clipWeights) {
				t.Fatalf("Adapters: %v, %v", as, err)
			}
			sp, err := s.LoadSpec(ms[0])
			if err != nil {
				t.Fatal(err)
			}
			if _, err := sp.Build(ms[0].Overrides); err != nil {
				t.Fatal(err)
			}
			p, err := s.BlobPath(m.Weights.Digest)
			if err != nil || digestOf(t, p) != m.Weights.Digest {
				t.Fatalf("BlobPath: %s, %v", p, err)
			}
			if _, err := s.Model("nope"); !errors.Is(err, ErrNotFound) {
				t.Errorf("unknown model: %v", err)
			}
			if _, err := s.BlobPath("sha256:" + strings.Repeat("0", 64)); !errors.Is(err, ErrNotFound) {
				t.Errorf("unknown blob: %v", err)
			}
			if err := s.RemoveModel("unet"); err != nil {
				t.Fatal(err)
			}
			if err := s.RemoveAdapter("lora"); err != nil {
				t.Fatal(err)
			}
			left, err := s.be.List(t.Context(), "blobs/sha256/")
			if err != nil || len(left) != 0 {
				t.Errorf("after removing everything: %v, %v", left, err)
			}
			if err := s.RemoveModel("unet"); !errors.Is(err, ErrNotFound) {
				t.Errorf("second remove: %v", err)
			}
		})
	}
}

// TestS3ReplicasShareOneStore: what one replica adds, another sees and
// reads from S3 once, then from its own cache.
func TestS3ReplicasShareOneStore(t *testing.T) {
	bucket := newBucket(t)
	a, b := s3Store(t, bucket, 0), s3Store(t, bucket, 0)
	m, err := a.AddModel("clip", clipSpec, clipWeights, clipTiny, "param.")
	if err != nil {
		t.Fatal(err)
	}
	if st := a.Cache().Stats(); st.Misses != 0 || st.Bytes < m.Weights.Size {
		t.Errorf("uploader's cache %+v: want its uploads kept, nothing downloaded", st)
	}
	got, err := b.Model("clip")
	if err != nil || got.Weights != m.Weights {
		t.Fatalf("replica b: %+v, %v", got, err)
	}
	for i := range 3 {
		p, err := b.BlobPath(m.Weights.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Dir(p) != b.Cache().Dir() || digestOf(t, p) != m.Weights.Digest {
			t.Errorf("read %d: %s is not a checked copy in b's cache", i, p)
		}
	}
	if st := b.Cache().Stats(); st.Misses != 1 || st.Hits != 2 {
		t.Errorf("replica b's cache %+v: want 1 download then 2 hits", st)
	}
}

// TestS3RefusesABlobWhoseContentIsWrong: a blob changed behind the
// store's back (bit rot, a bad copy) is refused, and nothing is cached.
func TestS3RefusesABlobWhoseContentIsWrong(t *testing.T) {
	bucket := newBucket(t)
	a := s3Store(t, bucket, 0)
	ad, err := a.AddAdapter("lora", clipWeights)
	if err != nil {
		t.Fatal(err)
	}
	obj := filepath.Join(s3ServerFor(t).Dir, bucket, "team", "models", "blobs", "sha256", strings.TrimPrefix(ad.File.Digest, "sha256:"))
	if err := os.WriteFile(obj, []byte("not the adapter"), 0o644); err != nil {
		t.Fatal(err)
	}
	b := s3Store(t, bucket, 0)
	if _, err := b.BlobPath(ad.File.Digest); err == nil || !strings.Contains(err.Error(), "refusing to cache") {
		t.Fatalf("BlobPath of a corrupt blob: %v", err)
	}
	if entries, _ := os.ReadDir(b.Cache().Dir()); len(entries) != 0 {
		t.Errorf("the cache kept %d files", len(entries))
	}
}

// TestS3FailedAddWritesNothing: weights that do not fit the spec are
// refused before anything goes up, so no manifest names a missing blob.
func TestS3FailedAddWritesNothing(t *testing.T) {
	s := s3Store(t, newBucket(t), 0)
	if _, err := s.AddModel("x", clipSpec, unetWeights, clipTiny, "param."); err == nil {
		t.Fatal("weights that do not fit were stored")
	}
	for _, prefix := range []string{"blobs/", "models/"} {
		if objs, err := s.be.List(t.Context(), prefix); err != nil || len(objs) != 0 {
			t.Errorf("%s: %v, %v", prefix, objs, err)
		}
	}
}

func TestS3URLsAndSettings(t *testing.T) {
	srv := s3ServerFor(t)
	env := func(over map[string]string) func(string) string {
		return func(k string) string {
			if v, ok := over[k]; ok {
				return v
			}
			return srv.Getenv(k)
		}
	}
	cases := []struct {
		ref  string
		env  map[string]string
		want string
	}{
		{"s3://", nil, "no bucket"},
		{"s3:///prefix", nil, "no bucket"},
		{"s3://b/../x", nil, "not a clean path"},
		{"s3://b/a//x", nil, "not a clean path"},
		{"s3://no-such-bucket/x", nil, `bucket "no-such-bucket" does not exist`},
		{"s3://b/x", map[string]string{"AWS_ENDPOINT_URL_S3": "ftp://h"}, "want http://host"},
		{"s3://b/x", map[string]string{"AWS_ENDPOINT_URL_S3": "http://h/path"}, "want http://host"},
	}
	for _, c := range cases {
		_, err := OpenWith(c.ref, Options{CacheDir: t.TempDir(), Getenv: env(c.env)})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("OpenWith(%q, %v): %v; want an error saying %q", c.ref, c.env, err, c.want)
		}
	}
	bucket := newBucket(t)
	if _, err := OpenWith("s3://"+bucket+"/x", Options{CacheDir: t.TempDir(), Getenv: env(map[string]string{"AWS_SECRET_ACCESS_KEY": "wrong-secret-0123456789"})}); err == nil {
		t.Error("a wrong secret was accepted")
	}
	for _, ref := range []string{"s3://" + bucket, "s3://" + bucket + "/", "s3://" + bucket + "/a/b/"} {
		if _, err := OpenWith(ref, Options{CacheDir: t.TempDir(), Getenv: srv.Getenv}); err != nil {
			t.Errorf("OpenWith(%q): %v", ref, err)
		}
	}
}
