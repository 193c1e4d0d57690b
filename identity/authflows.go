package identity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/sag-gateway/sag/store"
)

// The authorization server keeps each sign-in in progress in the store,
// under a random id that is a bearer secret (a request id in its forms, a
// cookie, a state, a code; the store keeps only their hashes): a person may
// start at one gateway and go on at another sharing the store, and a
// restart loses none. What is kept, by kind:
const (
	flowPending  = "pending"  // an authorization request waiting for its person
	flowSignIn   = "signin"   // a browser sign-in (the sign-in cookie)
	flowFedLogin = "fedlogin" // a sign-in at an identity provider (its state)
	flowCode     = "code"     // an authorization code
)

// FlowStore keeps the sign-ins in progress (*store.DB implements it).
type FlowStore interface {
	PutFlow(ctx context.Context, kind, id string, data []byte, expires time.Time, max int, now time.Time) error
	GetFlow(ctx context.Context, kind, id string) (store.Flow, error)
	UpdateFlow(ctx context.Context, kind, id string, data []byte) error
	TakeFlow(ctx context.Context, kind, id string) (store.Flow, error)
	BumpFlow(ctx context.Context, kind, id string) (int, error)
	SpendFlow(ctx context.Context, kind, id string, spent []byte) ([]byte, error)
	SetFlowSpent(ctx context.Context, kind, id string, spent []byte) error
}

var _ FlowStore = (*store.DB)(nil)

// errFlowGone is a flow that is not (or no longer) kept: unknown, used or
// expired.
var errFlowGone = errors.New("unknown, used or expired")

// pendingRecord is a pendingAuthz as kept.
type pendingRecord struct {
	Client    string        `json:"client"`
	Redirect  string        `json:"redirect"`
	State     string        `json:"state,omitempty"`
	Scope     []string      `json:"scope"`
	Resource  string        `json:"resource"`
	Challenge string        `json:"challenge"`
	JKT       string        `json:"jkt,omitempty"`
	Browser   string        `json:"browser"`
	CSRF      string        `json:"csrf"`
	SignIn    *signInRecord `json:"sign_in,omitempty"`
	Expires   time.Time     `json:"expires"`
}

// signInRecord is a signIn as kept (without its id: the cookie, a bearer
// secret, is kept only as the hash its flow is stored under).
type signInRecord struct {
	SID     string    `json:"sid"`
	Subject string    `json:"sub"`
	Groups  []string  `json:"groups,omitempty"`
	At      time.Time `json:"at"`
	Expires time.Time `json:"expires"`
}

// fedLoginRecord is a fedLogin as kept.
type fedLoginRecord struct {
	Provider string    `json:"provider"`
	Pending  string    `json:"pending"`
	Nonce    string    `json:"nonce"`
	Verifier string    `json:"verifier"`
	Expires  time.Time `json:"expires"`
}

// issuedRecord is what a redeemed code issued, as kept.
type issuedRecord struct {
	Family    string    `json:"family"`
	AccessJTI string    `json:"access_jti,omitempty"`
	AccessExp time.Time `json:"access_exp,omitzero"`
}

func (p *pendingAuthz) record() pendingRecord {
	r := pendingRecord{Client: p.client.ID, Redirect: p.redirect, State: p.state, Scope: p.scope, Resource: p.resource,
		Challenge: p.challenge, JKT: p.jkt, Browser: p.browser, CSRF: p.csrf, Expires: p.expires}
	if si := p.signIn; si != nil {
		r.SignIn = &signInRecord{SID: si.sid, Subject: si.subject, Groups: si.groups, At: si.at, Expires: si.expires}
	}
	return r
}

func (r *signInRecord) signIn() *signIn {
	return &signIn{sid: r.SID, subject: r.Subject, groups: r.Groups, at: r.At, expires: r.Expires}
}

func (i *issued) record() issuedRecord {
	return issuedRecord{Family: i.family, AccessJTI: i.accessJTI, AccessExp: i.accessExp}
}

// pendingOf rebuilds a pending request from its record (its client looked
// up again).
func (s *AuthServer) pendingOf(ctx context.Context, r pendingRecord) (*pendingAuthz, error) {
	client, err := s.client(ctx, r.Client)
	if err != nil {
		return nil, fmt.Errorf("client %s: %w", r.Client, err)
	}
	p := &pendingAuthz{client: client, redirect: r.Redirect, state: r.State, scope: r.Scope, resource: r.Resource,
		challenge: r.Challenge, jkt: r.JKT, browser: r.Browser, csrf: r.CSRF, expires: r.Expires}
	if r.SignIn != nil {
		p.signIn = r.SignIn.signIn()
	}
	return p, nil
}

// putFlow keeps v as a new flow of kind until expires and returns its id
// (store.ErrFull when too many of the kind are in progress).
func (s *AuthServer) putFlow(ctx context.Context, kind string, v any, expires time.Time) (string, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	id := randomToken()
	return id, s.o.Store.PutFlow(ctx, kind, id, data, expires, maxPending, s.now())
}

// getFlow reads the flow of kind id into v: errFlowGone when it is not
// kept or expired (an expired one is dropped).
func (s *AuthServer) getFlow(ctx context.Context, kind, id string, v any) (store.Flow, error) {
	if id == "" {
		return store.Flow{}, errFlowGone
	}
	f, err := s.o.Store.GetFlow(ctx, kind, id)
	return f, s.decodeFlow(ctx, kind, id, f, err, v)
}

// takeFlow is getFlow that also drops the flow: one taker only.
func (s *AuthServer) takeFlow(ctx context.Context, kind, id string, v any) (store.Flow, error) {
	if id == "" {
		return store.Flow{}, errFlowGone
	}
	f, err := s.o.Store.TakeFlow(ctx, kind, id)
	return f, s.decodeFlow(ctx, kind, id, f, err, v)
}

func (s *AuthServer) decodeFlow(ctx context.Context, kind, id string, f store.Flow, err error, v any) error {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return errFlowGone
	case err != nil:
		return err
	case s.now().After(f.Expires):
		_, _ = s.o.Store.TakeFlow(ctx, kind, id)
		return errFlowGone
	}
	return json.Unmarshal(f.Data, v)
}

// getPending returns the pending request id.
func (s *AuthServer) getPending(ctx context.Context, id string) (*pendingAuthz, error) {
	var r pendingRecord
	if _, err := s.getFlow(ctx, flowPending, id, &r); err != nil {
		return nil, err
	}
	return s.pendingOf(ctx, r)
}

// savePending keeps the changes made to the pending request id.
func (s *AuthServer) savePending(ctx context.Context, id string, p *pendingAuthz) error {
	data, err := json.Marshal(p.record())
	if err != nil {
		return err
	}
	return s.o.Store.UpdateFlow(ctx, flowPending, id, data)
}

// drop ends the pending request id.
func (s *AuthServer) drop(ctx context.Context, id string) {
	_, _ = s.o.Store.TakeFlow(ctx, flowPending, id)
}
