package predict

import (
	"container/list"
	"crypto/sha256"
	"encoding/hex"
	"sync"
)

// Digest names an image by its bytes: "sha256:<hex>" of the encoded file
// (the PNG as sent), as the daemon reports it.
func Digest(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Cache keeps image embeddings by digest, least recently used first out,
// within a bound on the bytes their values take. It is safe for
// concurrent use. The zero value is not usable: see NewCache.
type Cache struct {
	mu       sync.Mutex
	maxBytes int64
	bytes    int64
	order    *list.List // front: most recently used
	byKey    map[string]*list.Element
	hits     int64
	misses   int64
}

type cacheEntry struct {
	key string
	e   *Embedding
}

// NewCache makes a cache holding at most maxBytes of embeddings (at least
// one embedding is always kept, whatever its size; maxBytes <= 0 keeps
// none).
func NewCache(maxBytes int64) *Cache {
	return &Cache{maxBytes: maxBytes, order: list.New(), byKey: map[string]*list.Element{}}
}

// Get returns the embedding cached under key, marking it recently used.
func (c *Cache) Get(key string) (*Embedding, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.byKey[key]
	if !ok {
		c.misses++
		return nil, false
	}
	c.hits++
	c.order.MoveToFront(el)
	return el.Value.(*cacheEntry).e, true
}

// Add caches e under key (replacing what was there) and evicts the least
// recently used embeddings beyond the bound. Cached embeddings are shared:
// callers must not modify them.
func (c *Cache) Add(key string, e *Embedding) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.maxBytes <= 0 {
		return
	}
	if el, ok := c.byKey[key]; ok {
		c.bytes -= el.Value.(*cacheEntry).e.Bytes()
		el.Value = &cacheEntry{key, e}
		c.order.MoveToFront(el)
	} else {
		c.byKey[key] = c.order.PushFront(&cacheEntry{key, e})
	}
	c.bytes += e.Bytes()
	for c.bytes > c.maxBytes && c.order.Len() > 1 {
		last := c.order.Back()
		ent := last.Value.(*cacheEntry)
		c.order.Remove(last)
		delete(c.byKey, ent.key)
		c.bytes -= ent.e.Bytes()
	}
}

// Stats reports the cache's size and use.
type Stats struct {
	Entries int   `json:"entries"`
	Bytes   int64 `json:"bytes"`
	Hits    int64 `json:"hits"`
	Misses  int64 `json:"misses"`
}

// Stats returns the current counts.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Stats{Entries: c.order.Len(), Bytes: c.bytes, Hits: c.hits, Misses: c.misses}
}
