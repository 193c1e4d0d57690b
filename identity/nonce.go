package identity

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"time"
)

// Nonces issues and checks DPoP server nonces (RFC 9449 §8, §9) without
// state: a nonce is a time step and its HMAC under a per-process key. A nonce
// is accepted during its step and the next one, so a client that fetched one
// just before a step change is not bounced twice. Safe for concurrent use.
type Nonces struct {
	key  [32]byte
	step time.Duration
	now  func() time.Time
}

// NewNonces returns a nonce source whose nonces change every step (default
// one minute); now may be nil for time.Now.
func NewNonces(step time.Duration, now func() time.Time) *Nonces {
	n := &Nonces{step: step, now: now}
	if n.step <= 0 {
		n.step = time.Minute
	}
	if n.now == nil {
		n.now = time.Now
	}
	rand.Read(n.key[:])
	return n
}

func (n *Nonces) counter() uint64 { return uint64(n.now().UnixNano() / int64(n.step)) }

func (n *Nonces) make(c uint64) string {
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], c)
	m := hmac.New(sha256.New, n.key[:])
	m.Write(buf[:])
	return b64.EncodeToString(append(buf[:], m.Sum(nil)[:16]...))
}

// Current returns the nonce to hand out now (the DPoP-Nonce header).
func (n *Nonces) Current() string { return n.make(n.counter()) }

// Valid reports whether nonce was issued in the current or previous step.
func (n *Nonces) Valid(nonce string) bool {
	raw, err := b64.DecodeString(nonce)
	if err != nil || len(raw) != 24 {
		return false
	}
	c, now := binary.BigEndian.Uint64(raw[:8]), n.counter()
	if c != now && c+1 != now {
		return false
	}
	return hmac.Equal([]byte(n.make(c)), []byte(nonce))
}
