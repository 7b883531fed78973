// Package store keeps models and adapter files for the daemon, in a local
// folder or in an S3 bucket shared by several daemons.
//
// Files are content-addressed blobs (blobs/sha256/<hex>); a model is a
// manifest (models/<name>.json) naming its spec files and its weights by
// digest; an adapter is a manifest naming one file. Names and digests are
// validated before they touch a key, so nothing a request says can reach
// outside the store. Every write is atomic (a temporary file, fsync,
// rename; on S3 a PUT, which shows an object whole or not at all), and a
// manifest is written only after the blobs it names, so a crash leaves the
// old state or the new one, never half of either; temporary files left by
// a crash are removed when the store opens. On S3, blobs are read through a
// local Cache.
package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/internal/atomicfile"
	"github.com/refiners-go/refiners/internal/names"
	"github.com/refiners-go/refiners/spec"
)

// Model is a registered model: a spec (its main file and imports, by
// digest, under paths relative to their common directory), spec parameter
// overrides, and a safetensors weights file.
type Model struct {
	Name      string            `json:"name"`
	Created   time.Time         `json:"created"`
	Spec      string            `json:"spec"`       // main spec file, a key of SpecFiles
	SpecFiles map[string]string `json:"spec_files"` // relative path -> digest
	Overrides map[string]string `json:"overrides,omitempty"`
	Prefix    string            `json:"prefix,omitempty"` // key prefix of the model in the weights file
	Weights   Blob              `json:"weights"`
}

// Adapter is a registered adapter file (a LoRA, say), planned by a plugin.
type Adapter struct {
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	File    Blob      `json:"file"`
}

// Blob is a file in the store.
type Blob struct {
	Digest string `json:"digest"` // sha256:<64 hex>
	Size   int64  `json:"size"`
	Source string `json:"source,omitempty"` // base name of the file it was added from
}

// Store is a model store on a Backend. Its methods are safe for
// concurrent use within one process; several processes may share an S3
// store (writes are whole objects, and blobs never change).
type Store struct {
	be    Backend
	disk  *diskBackend // the backend when it is a local folder: blobs are read in place
	cache *Cache       // else blobs are read through this
	mu    sync.Mutex
}

// Options are the settings of a store on S3 (a local folder needs none).
type Options struct {
	// CacheDir is the local blob cache (one per process); default
	// <user cache dir>/refiners-go/blobs.
	CacheDir string
	// CacheBytes bounds the cache; 0: no bound.
	CacheBytes int64
	// Getenv reads the S3 settings (S3Env); default os.Getenv.
	Getenv func(string) string
}

// IsRemote reports whether a store reference names an S3 store
// (s3://bucket/prefix) rather than a local folder.
func IsRemote(ref string) bool { return strings.HasPrefix(ref, "s3://") }

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// ErrNotFound is returned (wrapped) for unknown models, adapters and blobs.
var ErrNotFound = errors.New("not found")

// ErrInvalid is returned (wrapped) for malformed names and digests; it is
// names.ErrInvalid, which every name check wraps.
var ErrInvalid = names.ErrInvalid

// CheckDigest validates a digest: "sha256:" and 64 lower-case hex digits.
func CheckDigest(d string) error {
	if !digestRE.MatchString(d) {
		return fmt.Errorf("%w digest %q: want sha256:<64 lower-case hex digits>", ErrInvalid, d)
	}
	return nil
}

// Open opens the store ref with default Options: a local folder (created
// if needed) or s3://bucket/prefix.
func Open(ref string) (*Store, error) { return OpenWith(ref, Options{}) }

// OpenWith opens (creating a local folder if needed) the store ref and
// removes temporary files an interrupted write left behind. ref is a
// folder or s3://bucket/prefix (the bucket must exist; S3Env says where
// the endpoint and the credentials come from).
func OpenWith(ref string, o Options) (*Store, error) {
	if !IsRemote(ref) {
		d, err := openDisk(ref)
		if err != nil {
			return nil, err
		}
		return &Store{be: d, disk: d}, nil
	}
	if o.Getenv == nil {
		o.Getenv = os.Getenv
	}
	if o.CacheDir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return nil, fmt.Errorf("store %s: no cache folder given and %w", ref, err)
		}
		o.CacheDir = filepath.Join(base, "refiners-go", "blobs")
	}
	c, err := OpenCache(o.CacheDir, o.CacheBytes)
	if err != nil {
		return nil, err
	}
	b, err := openS3(ref, c.Dir(), o.Getenv)
	if err != nil {
		return nil, err
	}
	return &Store{be: b, cache: c}, nil
}

// Root is the store's folder, or its s3:// URL.
func (s *Store) Root() string { return s.be.String() }

// Cache is the local blob cache of a remote store (nil for a folder).
func (s *Store) Cache() *Cache { return s.cache }

func blobKey(digest string) string { return "blobs/sha256/" + strings.TrimPrefix(digest, "sha256:") }

// BlobPath is the local path of a blob already in the store: its file in a
// local store, or its copy in the cache of a remote one (downloaded and
// checked the first time).
func (s *Store) BlobPath(digest string) (string, error) {
	if err := CheckDigest(digest); err != nil {
		return "", err
	}
	ctx := context.Background()
	if s.disk != nil {
		if _, err := s.be.Stat(ctx, blobKey(digest)); err != nil {
			return "", fmt.Errorf("blob %s: %w", digest, err)
		}
		return s.disk.path(blobKey(digest)), nil
	}
	p, err := s.cache.Path(digest, 0, func() (io.ReadCloser, error) { return s.be.Get(ctx, blobKey(digest)) })
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return "", fmt.Errorf("blob %s: %w", digest, ErrNotFound)
		}
		return "", err
	}
	return p, nil
}

// PutBlob copies r into the store. If want is not empty the content must
// have that digest, or nothing is kept. At most limit bytes are read
// (0: no limit); a longer stream is refused.
func (s *Store) PutBlob(r io.Reader, want string, limit int64) (Blob, error) {
	if want != "" {
		if err := CheckDigest(want); err != nil {
			return Blob{}, err
		}
	}
	tmp, err := atomicfile.Create(s.be.StageDir("blobs/sha256/x"))
	if err != nil {
		return Blob{}, fmt.Errorf("store blob: %w", err)
	}
	defer tmp.Abort() // a no-op once committed
	h := sha256.New()
	src := r
	if limit > 0 {
		src = io.LimitReader(r, limit+1)
	}
	n, err := io.Copy(io.MultiWriter(tmp, h), src)
	if err == nil && limit > 0 && n > limit {
		err = fmt.Errorf("blob is larger than %d bytes", limit)
	}
	if err != nil {
		return Blob{}, fmt.Errorf("store blob: %w", err)
	}
	got := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if want != "" && got != want {
		return Blob{}, fmt.Errorf("%w content: its digest is %s, not %s", ErrInvalid, got, want)
	}
	if err := tmp.Seal(0o600); err != nil {
		return Blob{}, fmt.Errorf("store blob: %w", err)
	}
	ctx := context.Background()
	key := blobKey(got)
	// Blobs never change: one written recently (another replica's upload,
	// say) is not sent again. An older one is written anew, which makes it
	// recent: else collect could take it, unreferenced for over
	// uploadGrace, before the manifest that names it again is written.
	info, err := s.be.Stat(ctx, key)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Blob{}, fmt.Errorf("store blob: %w", err)
	}
	if err != nil || time.Since(info.Modified) > uploadGrace/2 {
		if err := s.be.Put(ctx, key, tmp.Name()); err != nil {
			return Blob{}, fmt.Errorf("store blob: %w", err)
		}
	}
	if s.cache != nil {
		if err := s.cache.Adopt(tmp.Name(), got, n); err != nil {
			return Blob{}, err
		}
	}
	return Blob{Digest: got, Size: n}, nil
}

func (s *Store) putFile(p string) (Blob, error) {
	f, err := os.Open(p)
	if err != nil {
		return Blob{}, err
	}
	defer f.Close()
	b, err := s.PutBlob(f, "", 0)
	if err != nil {
		return Blob{}, fmt.Errorf("%s: %w", p, err)
	}
	b.Source = filepath.Base(p)
	return b, nil
}

// AddModel registers a model under name from a spec file (its imports
// come along) and a weights file, replacing any model of that name. The
// spec must build with the overrides and the weights must fit it (a dry
// run: every parameter present with its shape), so a stored model always
// loads.
func (s *Store) AddModel(name, specPath, weightsPath string, overrides map[string]string, prefix string) (*Model, error) {
	if err := names.Check("model", name); err != nil {
		return nil, err
	}
	sp, err := spec.Load(specPath)
	if err != nil {
		return nil, err
	}
	rel, err := relativeSet(sp.Files)
	if err != nil {
		return nil, err
	}
	return s.addModel(name, sp, rel, func(i int) (Blob, error) { return s.putFile(sp.Files[i]) }, weightsPath, overrides, prefix)
}

// AddModelFS is AddModel for a spec read from fsys (the specs embedded in
// the binary, say), under its name there.
func (s *Store) AddModelFS(name string, fsys fs.FS, specName, weightsPath string, overrides map[string]string, prefix string) (*Model, error) {
	if err := names.Check("model", name); err != nil {
		return nil, err
	}
	sp, err := spec.LoadFS(fsys, specName)
	if err != nil {
		return nil, err
	}
	put := func(i int) (Blob, error) {
		b, err := fs.ReadFile(fsys, sp.Files[i])
		if err != nil {
			return Blob{}, err
		}
		blob, err := s.PutBlob(bytes.NewReader(b), "", 0)
		if err != nil {
			return Blob{}, fmt.Errorf("%s: %w", sp.Files[i], err)
		}
		blob.Source = path.Base(sp.Files[i])
		return blob, nil
	}
	return s.addModel(name, sp, sp.Files, put, weightsPath, overrides, prefix)
}

// addModel checks the weights against the built spec, then stores the
// spec's files (put stores file i, named rel[i] in the manifest), the
// weights and the manifest.
func (s *Store) addModel(name string, sp *spec.Spec, rel []string, put func(i int) (Blob, error), weightsPath string, overrides map[string]string, prefix string) (*Model, error) {
	m, err := sp.Build(overrides)
	if err != nil {
		return nil, err
	}
	header, err := weights.ReadFileHeader(weightsPath)
	if err != nil {
		return nil, err
	}
	if rep := spec.PlanHeader(m, header, prefix); !rep.OK() {
		return nil, fmt.Errorf("%s does not fit %s: %w", weightsPath, sp.File, rep.Errors(weightsPath))
	}
	model := &Model{Name: name, Created: time.Now().UTC(), SpecFiles: map[string]string{}, Overrides: overrides, Prefix: prefix}
	for i := range sp.Files {
		b, err := put(i)
		if err != nil {
			return nil, err
		}
		model.SpecFiles[rel[i]] = b.Digest
		if i == 0 {
			model.Spec = rel[i]
		}
	}
	if model.Weights, err = s.putFile(weightsPath); err != nil {
		return nil, err
	}
	if err := s.writeManifest("models", name, model); err != nil {
		return nil, err
	}
	return model, nil
}

// relativeSet names files relative to their deepest common directory, so
// that imports keep resolving between them.
func relativeSet(files []string) ([]string, error) {
	abs := make([]string, len(files))
	for i, f := range files {
		a, err := filepath.Abs(f)
		if err != nil {
			return nil, err
		}
		abs[i] = filepath.ToSlash(a)
	}
	root := path.Dir(abs[0])
	for _, a := range abs[1:] {
		for !strings.HasPrefix(a, root+"/") && root != "/" {
			root = path.Dir(root)
		}
	}
	out := make([]string, len(abs))
	for i, a := range abs {
		out[i] = strings.TrimPrefix(strings.TrimPrefix(a, root), "/")
	}
	return out, nil
}

// AddAdapter registers an adapter file under name.
func (s *Store) AddAdapter(name, filePath string) (*Adapter, error) {
	if err := names.Check("adapter", name); err != nil {
		return nil, err
	}
	if _, _, err := weights.ReadHeader(filePath); err != nil {
		return nil, err
	}
	b, err := s.putFile(filePath)
	if err != nil {
		return nil, err
	}
	a := &Adapter{Name: name, Created: time.Now().UTC(), File: b}
	if err := s.writeManifest("adapters", name, a); err != nil {
		return nil, err
	}
	return a, nil
}

// Model reads a model's manifest.
func (s *Store) Model(name string) (*Model, error) {
	var m Model
	if err := s.readManifest("models", "model", name, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// Adapter reads an adapter's manifest.
func (s *Store) Adapter(name string) (*Adapter, error) {
	var a Adapter
	if err := s.readManifest("adapters", "adapter", name, &a); err != nil {
		return nil, err
	}
	return &a, nil
}

// Models lists the registered models, by name.
func (s *Store) Models() ([]*Model, error) {
	names, err := s.names("models")
	if err != nil {
		return nil, err
	}
	var out []*Model
	for _, n := range names {
		m, err := s.Model(n)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// Adapters lists the registered adapters, by name.
func (s *Store) Adapters() ([]*Adapter, error) {
	names, err := s.names("adapters")
	if err != nil {
		return nil, err
	}
	var out []*Adapter
	for _, n := range names {
		a, err := s.Adapter(n)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// RemoveModel unregisters a model and deletes the blobs nothing else uses.
func (s *Store) RemoveModel(name string) error { return s.remove("models", "model", name) }

// RemoveAdapter unregisters an adapter and deletes its blob if unused.
func (s *Store) RemoveAdapter(name string) error { return s.remove("adapters", "adapter", name) }

func (s *Store) remove(dir, what, name string) error {
	if err := names.Check(what, name); err != nil {
		return err
	}
	var digests []string
	switch dir {
	case "models":
		m, err := s.Model(name)
		if err != nil {
			return err
		}
		digests = append(digests, m.Weights.Digest)
		for _, d := range m.SpecFiles {
			digests = append(digests, d)
		}
	default:
		a, err := s.Adapter(name)
		if err != nil {
			return err
		}
		digests = append(digests, a.File.Digest)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.be.Delete(context.Background(), dir+"/"+name+".json"); err != nil {
		return fmt.Errorf("remove %s %q: %w", what, name, err)
	}
	return s.collect(digests)
}

// uploadGrace is how long an uploaded blob that no manifest names is kept,
// so that it is not collected before the request that uses it arrives.
const uploadGrace = time.Hour

// collect deletes the blobs of a removed manifest that nothing else uses,
// and unreferenced blobs older than uploadGrace.
func (s *Store) collect(removed []string) error {
	used := map[string]bool{}
	models, err := s.Models()
	if err != nil {
		return err
	}
	for _, m := range models {
		used[m.Weights.Digest] = true
		for _, d := range m.SpecFiles {
			used[d] = true
		}
	}
	adapters, err := s.Adapters()
	if err != nil {
		return err
	}
	for _, a := range adapters {
		used[a.File.Digest] = true
	}
	ctx := context.Background()
	blobs, err := s.be.List(ctx, "blobs/sha256/")
	if err != nil {
		return err
	}
	for _, o := range blobs {
		d := "sha256:" + path.Base(o.Key)
		if CheckDigest(d) != nil || used[d] {
			continue
		}
		if time.Since(o.Modified) < uploadGrace && !slices.Contains(removed, d) {
			continue
		}
		if err := s.be.Delete(ctx, o.Key); err != nil {
			return fmt.Errorf("remove unused blob %s: %w", d, err)
		}
		if s.cache != nil {
			s.cache.Forget(d)
		}
	}
	return nil
}

// SpecFS serves a model's spec files from their blobs, under their
// relative paths; spec.LoadFS reads the spec and its imports from it.
func (s *Store) SpecFS(m *Model) (fs.FS, error) {
	files := map[string]string{}
	for rel, d := range m.SpecFiles {
		p, err := s.BlobPath(d)
		if err != nil {
			return nil, fmt.Errorf("model %s: spec file %s: %w", m.Name, rel, err)
		}
		files[rel] = p
	}
	return specFS(files), nil
}

// LoadSpec reads a model's spec from the store.
func (s *Store) LoadSpec(m *Model) (*spec.Spec, error) {
	fsys, err := s.SpecFS(m)
	if err != nil {
		return nil, err
	}
	return spec.LoadFS(fsys, m.Spec)
}

type specFS map[string]string // relative path -> blob path

func (f specFS) Open(name string) (fs.File, error) {
	p, ok := f[name]
	if !ok || !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return os.Open(p)
}

func (s *Store) names(dir string) ([]string, error) {
	objs, err := s.be.List(context.Background(), dir+"/")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, o := range objs {
		n, ok := strings.CutSuffix(strings.TrimPrefix(o.Key, dir+"/"), ".json")
		if ok && names.Valid(n) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out, nil
}

func (s *Store) readManifest(dir, what, name string, v any) error {
	if err := names.Check(what, name); err != nil {
		return err
	}
	r, err := s.be.Get(context.Background(), dir+"/"+name+".json")
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("%s %q: %w", what, name, ErrNotFound)
		}
		return fmt.Errorf("%s %q: %w", what, name, err)
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, maxManifest+1))
	if err == nil && len(b) > maxManifest {
		err = fmt.Errorf("larger than %d bytes", maxManifest)
	}
	if err != nil {
		return fmt.Errorf("%s %q: %w", what, name, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s %q: corrupt manifest: %w", what, name, err)
	}
	return nil
}

func (s *Store) writeManifest(dir, name string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	key := dir + "/" + name + ".json"
	s.mu.Lock()
	defer s.mu.Unlock()
	tmp, err := atomicfile.Create(s.be.StageDir(key))
	if err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	defer tmp.Abort()
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	if err := tmp.Seal(0o600); err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	return s.be.Put(context.Background(), key, tmp.Name())
}

// maxManifest bounds a manifest read from the store.
const maxManifest = 16 << 20
