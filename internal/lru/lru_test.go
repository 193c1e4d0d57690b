package lru

import "testing"

// TestEvictsOneAtATime: a full cache drops its least recently used entry
// only; a recently used entry survives any number of new keys.
func TestEvictsOneAtATime(t *testing.T) {
	c := New[string, int](3)
	c.Add("a", 1)
	c.Add("b", 2)
	c.Add("c", 3)
	c.Get("a") // a is now the most recently used
	c.Add("d", 4)
	if _, ok := c.Get("b"); ok {
		t.Error("b, the least recently used, was kept")
	}
	for _, k := range []string{"a", "c", "d"} {
		if _, ok := c.Get(k); !ok {
			t.Errorf("%s was evicted", k)
		}
	}
	for i := range 100 {
		c.Get("a")
		c.GetOrAdd(string(rune('e'+i)), func() int { return i })
	}
	if v, ok := c.Get("a"); !ok || v != 1 || c.Len() != 3 {
		t.Errorf("after a flood: a=%v %v, len %d", v, ok, c.Len())
	}
	c.RemoveFunc(func(k string) bool { return k == "a" })
	if _, ok := c.Get("a"); ok {
		t.Error("RemoveFunc kept a")
	}
	if New[int, int](0).max != 1 {
		t.Error("a cache of 0 entries")
	}
}
