package store

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/refiners-go/refiners/internal/atomicfile"
)

// Cache keeps blobs of a remote store on local disk, so that a replica
// reads weights from its own disk after the first time: content-addressed
// files (<dir>/<hex>), each checked against its digest when it is
// downloaded and again the first time this process uses a file an earlier
// one left; at most maxBytes in all, the least recently used evicted
// first. A file in use (a model's weights, opened or mapped) may be
// evicted: it stays readable by whoever holds it open until they close it.
// Each process should have a cache folder of its own.
type Cache struct {
	dir      string
	maxBytes int64 // 0: no bound

	mu      sync.Mutex
	entries map[string]*cacheEntry // by digest
	total   int64
	fills   map[string]*fill // downloads under way, by digest
	clock   int64            // last-use order
	stats   CacheStats
}

type cacheEntry struct {
	size     int64
	used     int64 // clock at the last use
	verified bool  // hashed by this process
}

type fill struct {
	done chan struct{}
	err  error
}

// CacheStats counts what the cache did since it opened.
type CacheStats struct {
	Hits, Misses, Evictions int64
	Bytes                   int64 // held now
}

// OpenCache opens (creating if needed) a cache folder of at most maxBytes
// (0: no bound), removes temporary files an interrupted download left,
// and takes the files there as its entries, oldest use first.
func OpenCache(dir string, maxBytes int64) (*Cache, error) {
	if maxBytes < 0 {
		return nil, fmt.Errorf("blob cache %s: size %d: want 0 (no bound) or more", dir, maxBytes)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("blob cache: %w", err)
	}
	if err := removeTemporaries(dir); err != nil {
		return nil, fmt.Errorf("blob cache %s: %w", dir, err)
	}
	c := &Cache{dir: dir, maxBytes: maxBytes, entries: map[string]*cacheEntry{}, fills: map[string]*fill{}}
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("blob cache %s: %w", dir, err)
	}
	type found struct {
		digest string
		size   int64
		mod    time.Time
	}
	var files []found
	for _, e := range des {
		d := "sha256:" + e.Name()
		if CheckDigest(d) != nil || !e.Type().IsRegular() {
			continue
		}
		if info, err := e.Info(); err == nil {
			files = append(files, found{d, info.Size(), info.ModTime()})
		}
	}
	slices.SortFunc(files, func(a, b found) int { return a.mod.Compare(b.mod) })
	for _, f := range files {
		c.clock++
		c.entries[f.digest] = &cacheEntry{size: f.size, used: c.clock}
		c.total += f.size
	}
	c.mu.Lock()
	c.evictLocked("")
	c.mu.Unlock()
	return c, nil
}

// Dir is the cache's folder.
func (c *Cache) Dir() string { return c.dir }

func (c *Cache) path(digest string) string {
	return filepath.Join(c.dir, strings.TrimPrefix(digest, "sha256:"))
}

// Stats reports the cache's counters.
func (c *Cache) Stats() CacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Bytes = c.total
	return s
}

// Path returns the local path of a blob, calling fetch to download it when
// the cache does not hold it (one download per digest at a time, however
// many ask). What fetch returns is checked against the digest and size
// before it is kept.
func (c *Cache) Path(digest string, size int64, fetch func() (io.ReadCloser, error)) (string, error) {
	if err := CheckDigest(digest); err != nil {
		return "", err
	}
	for {
		c.mu.Lock()
		if e, ok := c.entries[digest]; ok {
			if e.verified {
				c.clock++
				e.used = c.clock
				c.stats.Hits++
				c.mu.Unlock()
				touch(c.path(digest))
				return c.path(digest), nil
			}
		}
		if f, ok := c.fills[digest]; ok {
			c.mu.Unlock()
			<-f.done
			if f.err != nil {
				return "", f.err
			}
			continue
		}
		f := &fill{done: make(chan struct{})}
		c.fills[digest] = f
		e, held := c.entries[digest]
		c.mu.Unlock()
		ok := false
		if held {
			ok = c.verify(digest, e)
		} else {
			f.err = c.download(digest, size, fetch)
			ok = f.err == nil
		}
		c.mu.Lock()
		delete(c.fills, digest)
		c.mu.Unlock()
		close(f.done)
		if f.err != nil {
			return "", f.err
		}
		if ok {
			return c.path(digest), nil
		}
		// a rotten file was removed: download it on the next turn
	}
}

// verify hashes a file an earlier process left and reports whether it
// matches its name; one that does not is removed (and downloaded again by
// the caller's loop).
func (c *Cache) verify(digest string, e *cacheEntry) bool {
	got, _, err := hashFile(c.path(digest))
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil && got == digest {
		e.verified = true
		c.clock++
		e.used = c.clock
		c.stats.Hits++
		return true
	}
	delete(c.entries, digest)
	c.total -= e.size
	os.Remove(c.path(digest))
	return false
}

func hashFile(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), n, nil
}

// download copies fetch's stream to a temporary file, checks its digest
// and size, and renames it into place.
func (c *Cache) download(digest string, size int64, fetch func() (io.ReadCloser, error)) error {
	c.mu.Lock()
	c.stats.Misses++
	c.mu.Unlock()
	r, err := fetch()
	if err != nil {
		return fmt.Errorf("blob %s: %w", digest, err)
	}
	defer r.Close()
	tmp, err := atomicfile.Create(c.dir)
	if err != nil {
		return fmt.Errorf("blob cache: %w", err)
	}
	defer tmp.Abort()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), r)
	if err != nil {
		return fmt.Errorf("blob %s: download: %w", digest, err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != digest || (size > 0 && n != size) {
		return fmt.Errorf("blob %s: the store served %d bytes whose digest is %s: refusing to cache them", digest, n, got)
	}
	if err := tmp.Commit(c.path(digest), 0o600); err != nil {
		return fmt.Errorf("blob cache: %w", err)
	}
	c.add(digest, n)
	return nil
}

// Adopt moves a local file whose digest the caller computed (a blob just
// uploaded) into the cache.
func (c *Cache) Adopt(src, digest string, size int64) error {
	if err := os.Rename(src, c.path(digest)); err != nil {
		return fmt.Errorf("blob cache: %w", err)
	}
	c.add(digest, size)
	return nil
}

func (c *Cache) add(digest string, size int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.entries[digest]; ok {
		c.total -= old.size
	}
	c.clock++
	c.entries[digest] = &cacheEntry{size: size, used: c.clock, verified: true}
	c.total += size
	c.evictLocked(digest)
}

// evictLocked removes the least recently used files until the cache fits,
// never keep (the file just added: a blob larger than the bound is still
// served, and evicted next time).
func (c *Cache) evictLocked(keep string) {
	if c.maxBytes == 0 {
		return
	}
	for c.total > c.maxBytes {
		victim, oldest := "", int64(0)
		for d, e := range c.entries {
			if d != keep && c.fills[d] == nil && (victim == "" || e.used < oldest) {
				victim, oldest = d, e.used
			}
		}
		if victim == "" {
			return
		}
		c.total -= c.entries[victim].size
		delete(c.entries, victim)
		os.Remove(c.path(victim))
		c.stats.Evictions++
	}
}

// touch records a use in the file's modification time, so that the next
// process starts with the same order.
func touch(p string) {
	now := time.Now()
	os.Chtimes(p, now, now)
}

// Forget drops a blob from the cache (it was removed from the store).
func (c *Cache) Forget(digest string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[digest]; ok && c.fills[digest] == nil {
		c.total -= e.size
		delete(c.entries, digest)
		os.Remove(c.path(digest))
	}
}
