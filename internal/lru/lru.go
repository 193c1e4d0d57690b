// Package lru is a bounded map that evicts its least recently used entry,
// one at a time: a cache that is full never forgets everything at once (a
// flood of new keys cannot wipe what others earned, such as their
// rate-limit buckets). It must not hold anything that may never be
// forgotten, such as revocations.
package lru

import (
	"container/list"
	"sync"
)

// Cache is a bounded map, safe for concurrent use.
type Cache[K comparable, V any] struct {
	mu  sync.Mutex
	max int
	l   *list.List // of *entry, most recently used first
	m   map[K]*list.Element
}

type entry[K comparable, V any] struct {
	k K
	v V
}

// New returns a cache of at most size entries (at least 1).
func New[K comparable, V any](size int) *Cache[K, V] {
	return &Cache[K, V]{max: max(size, 1), l: list.New(), m: map[K]*list.Element{}}
}

// Get returns k's value and marks it used.
func (c *Cache[K, V]) Get(k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[k]; ok {
		c.l.MoveToFront(e)
		return e.Value.(*entry[K, V]).v, true
	}
	var zero V
	return zero, false
}

// GetOrAdd returns k's value, adding make() for it when it has none; a full
// cache first evicts its least recently used entry.
func (c *Cache[K, V]) GetOrAdd(k K, make func() V) V {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[k]; ok {
		c.l.MoveToFront(e)
		return e.Value.(*entry[K, V]).v
	}
	v := make()
	c.add(k, v)
	return v
}

// Add sets k's value.
func (c *Cache[K, V]) Add(k K, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[k]; ok {
		e.Value.(*entry[K, V]).v = v
		c.l.MoveToFront(e)
		return
	}
	c.add(k, v)
}

func (c *Cache[K, V]) add(k K, v V) {
	c.m[k] = c.l.PushFront(&entry[K, V]{k, v})
	if c.l.Len() > c.max {
		old := c.l.Back()
		c.l.Remove(old)
		delete(c.m, old.Value.(*entry[K, V]).k)
	}
}

// Remove deletes k.
func (c *Cache[K, V]) Remove(k K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[k]; ok {
		c.l.Remove(e)
		delete(c.m, k)
	}
}

// RemoveFunc deletes every entry whose key matches.
func (c *Cache[K, V]) RemoveFunc(match func(K) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.m {
		if match(k) {
			c.l.Remove(e)
			delete(c.m, k)
		}
	}
}

// Len is the number of entries.
func (c *Cache[K, V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.l.Len()
}
