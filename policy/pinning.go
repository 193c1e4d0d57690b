package policy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/sag-gateway/sag/store"
)

// PinStore persists tool pins; the store package implements it.
type PinStore interface {
	ListToolPins(ctx context.Context) ([]store.ToolPin, error)
	PutToolPin(ctx context.Context, p store.ToolPin) error
}

// PinState is the outcome of checking a tool definition against its pin.
type PinState int

const (
	// Pinned: the definition is the approved one.
	Pinned PinState = iota
	// FirstSeen: no pin existed; the definition is now pinned (trust on
	// first use: registering the upstream is its owner's approval).
	FirstSeen
	// Quarantined: the definition differs from the approved one (a rug
	// pull, or an update nobody approved yet). The tool is hidden and
	// uncallable until its owner approves the new definition.
	Quarantined
	// NewlyQuarantined: Quarantined, and this check is the first to see
	// this change (audit it).
	NewlyQuarantined
)

// Pins guards against rug pulls and tool poisoning: each upstream tool's
// definition (name, title, description, schemas, annotations) is hashed and
// pinned; a changed definition is quarantined until approved. Safe for
// concurrent use.
type Pins struct {
	st PinStore

	mu   sync.Mutex
	pins map[[2]string]store.ToolPin
}

// LoadPins reads the pins from st.
func LoadPins(ctx context.Context, st PinStore) (*Pins, error) {
	list, err := st.ListToolPins(ctx)
	if err != nil {
		return nil, err
	}
	p := &Pins{st: st, pins: map[[2]string]store.ToolPin{}}
	for _, pin := range list {
		p.pins[[2]string{pin.Upstream, pin.Tool}] = pin
	}
	return p, nil
}

// HashDefinition returns the SHA-256 (hex) of a tool definition's JSON
// encoding (map keys sorted, so equal definitions hash equally) and that
// encoding.
func HashDefinition(def any) (string, []byte, error) {
	b, err := json.Marshal(def)
	if err != nil {
		return "", nil, err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), b, nil
}

// Check compares def (the upstream's definition of tool) with its pin. It
// fails closed: if the pin cannot be stored, the tool is quarantined.
func (p *Pins) Check(ctx context.Context, upstream, tool string, def any) (PinState, error) {
	hash, raw, err := HashDefinition(def)
	if err != nil {
		return Quarantined, fmt.Errorf("pin %s/%s: %w", upstream, tool, err)
	}
	k := [2]string{upstream, tool}
	p.mu.Lock()
	defer p.mu.Unlock()
	pin, ok := p.pins[k]
	switch {
	case !ok:
		pin = store.ToolPin{Upstream: upstream, Tool: tool, Approved: hash}
		if err := p.st.PutToolPin(ctx, pin); err != nil {
			return Quarantined, fmt.Errorf("pin %s/%s: %w", upstream, tool, err)
		}
		p.pins[k] = pin
		return FirstSeen, nil
	case pin.Approved == hash:
		if pin.Pending != "" { // changed back to the approved definition
			pin.Pending, pin.PendingDef = "", nil
			if err := p.st.PutToolPin(ctx, pin); err != nil {
				return Quarantined, fmt.Errorf("pin %s/%s: %w", upstream, tool, err)
			}
			p.pins[k] = pin
		}
		return Pinned, nil
	case pin.Pending == hash:
		return Quarantined, nil
	default:
		pin.Pending, pin.PendingDef = hash, raw
		if err := p.st.PutToolPin(ctx, pin); err != nil {
			return Quarantined, fmt.Errorf("pin %s/%s: %w", upstream, tool, err)
		}
		p.pins[k] = pin
		return NewlyQuarantined, nil
	}
}

// Quarantined reports whether tool is held back by a changed definition.
func (p *Pins) Quarantined(upstream, tool string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	pin, ok := p.pins[[2]string{upstream, tool}]
	return ok && pin.Pending != ""
}

// ErrNothingPending is returned by Approve when the tool has no changed
// definition waiting.
var ErrNothingPending = errors.New("no changed definition awaits approval")

// Approve makes the pending definition of tool the approved one. hash, when
// not empty, must be the pending hash, so that the owner approves exactly
// the definition they reviewed.
func (p *Pins) Approve(ctx context.Context, upstream, tool, hash string) error {
	k := [2]string{upstream, tool}
	p.mu.Lock()
	defer p.mu.Unlock()
	pin, ok := p.pins[k]
	if !ok || pin.Pending == "" {
		return ErrNothingPending
	}
	if hash != "" && hash != pin.Pending {
		return fmt.Errorf("the pending definition is %s, not %s", pin.Pending, hash)
	}
	pin.Approved, pin.Pending, pin.PendingDef = pin.Pending, "", nil
	if err := p.st.PutToolPin(ctx, pin); err != nil {
		return err
	}
	p.pins[k] = pin
	return nil
}

// Reload reads the pins from the store again: another gateway sharing it
// approved a definition.
func (p *Pins) Reload(ctx context.Context) error {
	list, err := p.st.ListToolPins(ctx)
	if err != nil {
		return err
	}
	pins := make(map[[2]string]store.ToolPin, len(list))
	for _, pin := range list {
		pins[[2]string{pin.Upstream, pin.Tool}] = pin
	}
	p.mu.Lock()
	p.pins = pins
	p.mu.Unlock()
	return nil
}

// List returns the pins of one upstream.
func (p *Pins) List(upstream string) []store.ToolPin {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []store.ToolPin
	for k, pin := range p.pins {
		if k[0] == upstream {
			out = append(out, pin)
		}
	}
	return out
}
