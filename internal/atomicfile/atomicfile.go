// Package atomicfile writes files atomically: the content goes to a
// temporary file in the destination's folder, which is synced, given its
// mode and renamed over the destination, and the folder is synced. A reader
// (or a crash) sees the old file or the whole new one, never a part. It is
// the one way the project writes a file that matters: weights, store blobs
// and manifests, the plugin lockfile.
package atomicfile

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// TempPrefix starts the name of every temporary file; a folder's leftovers
// after a crash can be found (and removed) by it.
const TempPrefix = ".tmp-"

// File is a temporary file on its way to a destination.
type File struct {
	*os.File
	sealed, done bool
}

// Create opens a temporary file in dir. Write it, then Commit it to a path
// in dir (chosen now or once the content is known, e.g. its digest), or
// Abort it.
func Create(dir string) (*File, error) {
	f, err := os.CreateTemp(dir, TempPrefix+"*")
	if err != nil {
		return nil, err
	}
	return &File{File: f}, nil
}

// Seal finishes the content: sync, close, and give the temporary file its
// mode. It can then be used where it is (f.Name(), e.g. to run a binary
// before installing it) until Commit or Abort. Commit seals if needed.
func (f *File) Seal(mode os.FileMode) error {
	if f.sealed {
		return nil
	}
	f.sealed = true
	err := f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), mode)
	}
	return err
}

// Commit makes the written content path's, with mode (unless Seal gave
// one): seal, rename, sync the folder. On failure the temporary file is
// removed and path is unchanged.
func (f *File) Commit(path string, mode os.FileMode) error {
	if f.done {
		return fmt.Errorf("atomicfile: %s: already committed or aborted", f.Name())
	}
	f.done = true
	err := f.Seal(mode)
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := SyncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("write %s: sync folder: %w", path, err)
	}
	return nil
}

// Abort removes the temporary file; after Commit it does nothing, so it
// can be deferred.
func (f *File) Abort() {
	if f.done {
		return
	}
	f.done = true
	if !f.sealed {
		f.Close()
	}
	os.Remove(f.Name())
}

// WriteFile writes data to path atomically, with mode.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	return Write(path, mode, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// Write writes path atomically with what write produces; if write fails,
// path is unchanged.
func Write(path string, mode os.FileMode, write func(w io.Writer) error) error {
	f, err := Create(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer f.Abort()
	if err := write(f); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Commit(path, mode)
}

// SyncDir makes a folder's entries (a rename, a removal) durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
