// Package jsonscan walks JSON text without decoding it: the members of an
// object and the extent of a value, for the few places that must look at
// or rewrite a message's members cheaply (a raw upstream result, a DPoP
// proof's member names). It assumes valid JSON unless a function says
// otherwise.
package jsonscan

import (
	"encoding/json"
	"strings"
)

// Members calls fn with each member of the JSON object obj, in order: its
// key (unescaped), the member's bytes (key through value) and its value's.
// obj must be valid JSON; ok is false when it is not an object.
func Members(obj []byte, fn func(key string, member, value []byte)) (ok bool) {
	i := SkipSpace(obj, 1)
	for i < len(obj) && obj[i] != '}' {
		start := i
		end := SkipValue(obj, i)
		if end < 0 || obj[i] != '"' {
			return false
		}
		key := string(obj[i+1 : end-1])
		if strings.IndexByte(key, '\\') >= 0 && json.Unmarshal(obj[i:end], &key) != nil {
			return false
		}
		i = SkipSpace(obj, end)
		if i >= len(obj) || obj[i] != ':' {
			return false
		}
		v := SkipSpace(obj, i+1)
		if i = SkipValue(obj, v); i < 0 {
			return false
		}
		fn(key, obj[start:i], obj[v:i])
		if i = SkipSpace(obj, i); i < len(obj) && obj[i] == ',' {
			i = SkipSpace(obj, i+1)
		}
	}
	return i == len(obj)-1
}

// SkipSpace returns the index of the first byte at or after i that is not
// JSON white space.
func SkipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// SkipValue returns the index just past the JSON value at b[i], -1 when
// b ends first.
func SkipValue(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		for i++; i < len(b); i++ {
			switch b[i] {
			case '\\':
				i++
			case '"':
				return i + 1
			}
		}
		return -1
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				if i = SkipValue(b, i); i < 0 {
					return -1
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return -1
	}
	for i < len(b) && !strings.ContainsRune(",}] \t\r\n", rune(b[i])) {
		i++
	}
	return i
}
