package schemas

import (
	"crypto/sha256"
	"sync"
)

// Cache compiles each distinct schema document once. Documents are keyed by
// the SHA-256 of their raw bytes, so two byte-identical documents share one
// *Schema; a document that fails to compile keeps failing with the same error
// without being compiled again. The zero value is not usable; call NewCache.
// A Cache is safe for concurrent use, and concurrent Gets of the same document
// compile it once.
//
// Entries are never evicted: a Cache is meant for the finite set of schemas a
// gateway's upstreams and allow-lists declare.
type Cache struct {
	mu      sync.Mutex
	entries map[[sha256.Size]byte]*cacheEntry
}

type cacheEntry struct {
	once   sync.Once
	schema *Schema
	err    error
}

// NewCache returns an empty Cache.
func NewCache() *Cache {
	return &Cache{entries: make(map[[sha256.Size]byte]*cacheEntry)}
}

// Get returns the compiled schema for raw, compiling it on first use.
func (c *Cache) Get(raw []byte) (*Schema, error) {
	key := sha256.Sum256(raw)
	c.mu.Lock()
	e, ok := c.entries[key]
	if !ok {
		e = &cacheEntry{}
		c.entries[key] = e
	}
	c.mu.Unlock()
	e.once.Do(func() { e.schema, e.err = Compile(raw) })
	return e.schema, e.err
}

// Len reports how many distinct documents the cache holds.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
