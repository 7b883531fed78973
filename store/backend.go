package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/refiners-go/refiners/internal/atomicfile"
)

// Backend is where a store keeps its objects, under slash-separated keys:
// blobs/sha256/<hex>, models/<name>.json, adapters/<name>.json. The store's
// logic (names, digests, manifests, collection) is the same on every
// backend; a backend only moves bytes.
type Backend interface {
	// Get opens key's content; a missing key is ErrNotFound (wrapped).
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// Stat describes key; a missing key is ErrNotFound (wrapped).
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	// List lists the keys that start with prefix (a folder: "models/").
	List(ctx context.Context, prefix string) ([]ObjectInfo, error)
	// Put stores the content of the local file src (written and synced by
	// the caller, in StageDir(key)) under key, atomically: readers see the
	// old content or the new one, whole. The backend may move src.
	Put(ctx context.Context, key, src string) error
	// Delete removes key; a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// StageDir is the local folder where the store writes a file before
	// it Puts it under key.
	StageDir(key string) string
	// String names the backend in messages (a folder or an s3:// URL).
	String() string
}

// ObjectInfo is an object in a backend.
type ObjectInfo struct {
	Key      string
	Size     int64
	Modified time.Time
}

// diskBackend keeps objects as files under a folder: a write is a
// temporary file in the destination folder, synced, then renamed.
type diskBackend struct{ root string }

func openDisk(root string) (*diskBackend, error) {
	for _, d := range []string{"blobs/sha256", "models", "adapters"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return nil, fmt.Errorf("store %s: %w", root, err)
		}
	}
	b := &diskBackend{root: root}
	for _, d := range []string{"blobs/sha256", "models", "adapters"} {
		if err := removeTemporaries(filepath.Join(root, d)); err != nil {
			return nil, fmt.Errorf("store %s: %w", root, err)
		}
	}
	return b, nil
}

// removeTemporaries deletes the temporary files an interrupted write left
// in dir.
func removeTemporaries(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), atomicfile.TempPrefix) {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	return nil
}

func (b *diskBackend) path(key string) string { return filepath.Join(b.root, filepath.FromSlash(key)) }

func (b *diskBackend) String() string { return b.root }

func (b *diskBackend) StageDir(key string) string { return filepath.Dir(b.path(key)) }

func notFound(key string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w", key, ErrNotFound)
	}
	return err
}

func (b *diskBackend) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	f, err := os.Open(b.path(key))
	if err != nil {
		return nil, notFound(key, err)
	}
	return f, nil
}

func (b *diskBackend) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	info, err := os.Stat(b.path(key))
	if err != nil {
		return ObjectInfo{}, notFound(key, err)
	}
	return ObjectInfo{Key: key, Size: info.Size(), Modified: info.ModTime()}, nil
}

func (b *diskBackend) List(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	dir := strings.TrimSuffix(prefix, "/")
	entries, err := os.ReadDir(b.path(dir))
	if err != nil {
		return nil, err
	}
	var out []ObjectInfo
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), atomicfile.TempPrefix) || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		out = append(out, ObjectInfo{Key: dir + "/" + e.Name(), Size: info.Size(), Modified: info.ModTime()})
	}
	return out, nil
}

func (b *diskBackend) Put(ctx context.Context, key, src string) error {
	dst := b.path(key)
	if err := os.Rename(src, dst); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(dst)); err != nil {
		return fmt.Errorf("write %s: sync folder: %w", dst, err)
	}
	return nil
}

func (b *diskBackend) Delete(ctx context.Context, key string) error {
	p := b.path(key)
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(p))
}
