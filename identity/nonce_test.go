package identity

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/sag-gateway/sag/internal/testutil"
)

func TestNoncesSteps(t *testing.T) {
	clock := testutil.NewClock(testNow, 0)
	n := NewNonces(time.Minute, clock.Now)
	cur := n.Current()
	if !n.Valid(cur) {
		t.Fatal("current nonce refused")
	}
	if n.Current() != cur {
		t.Error("nonce changed within its step")
	}
	clock.Add(time.Minute)
	if n.Current() == cur {
		t.Error("nonce did not change with the step")
	}
	if !n.Valid(cur) {
		t.Error("nonce of the previous step refused")
	}
	if !n.Valid(n.Current()) {
		t.Error("new current nonce refused")
	}
	clock.Add(time.Minute)
	if n.Valid(cur) {
		t.Error("nonce two steps old accepted")
	}
	clock.Add(time.Hour)
	if n.Valid(cur) {
		t.Error("nonce an hour old accepted")
	}
}

func TestNoncesRefuse(t *testing.T) {
	clock := testutil.NewClock(testNow, 0)
	n := NewNonces(time.Minute, clock.Now)
	cur := n.Current()
	raw, err := b64.DecodeString(cur)
	if err != nil || len(raw) != 24 {
		t.Fatalf("nonce %q: %v, %d bytes", cur, err, len(raw))
	}
	counter := binary.BigEndian.Uint64(raw[:8])
	flip := func(i int) string {
		b := append([]byte(nil), raw...)
		b[i] ^= 1
		return b64url(b)
	}
	withCounter := func(c uint64) string {
		b := append([]byte(nil), raw...)
		binary.BigEndian.PutUint64(b[:8], c)
		return b64url(b)
	}
	cases := map[string]string{
		"tampered MAC":                    flip(23),
		"tampered counter":                flip(7),
		"previous counter, current MAC":   withCounter(counter - 1),
		"next step (correctly MACed)":     n.make(counter + 1),
		"two steps old (correctly MACed)": n.make(counter - 2),
		"from another server":             NewNonces(time.Minute, clock.Now).Current(),
		"empty":                           "",
		"garbage":                         "not a nonce!",
		"too short":                       cur[:len(cur)-2],
		"too long":                        cur + "AA",
		"padded":                          cur + "=",
		"standard base64":                 strings.NewReplacer("-", "+", "_", "/").Replace(cur) + "+",
		"24 zero bytes":                   b64url(make([]byte, 24)),
	}
	for name, nonce := range cases {
		if n.Valid(nonce) {
			t.Errorf("%s: %q accepted", name, nonce)
		}
	}
	if !n.Valid(cur) {
		t.Error("current nonce refused after the attempts")
	}
}

func TestNoncesDefaults(t *testing.T) {
	n := NewNonces(0, nil)
	if n.step != time.Minute {
		t.Errorf("default step = %v", n.step)
	}
	if !n.Valid(n.Current()) {
		t.Error("current nonce refused")
	}
}
