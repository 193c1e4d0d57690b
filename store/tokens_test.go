package store

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

func TestMintedTokenLineage(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	for _, sess := range []Session{
		{ID: "u1", Kind: KindUser, Subject: "alice", State: StateActive},
		{ID: "a1", Kind: KindAgent, Parent: "u1", Subject: "alice", Agent: "spiffe://td/agent", State: StateActive},
		{ID: "m1", Kind: KindMCP, Parent: "a1", Subject: "alice", Agent: "spiffe://td/agent", State: StateActive},
	} {
		if err := s.PutSession(ctx, sess); err != nil {
			t.Fatal(err)
		}
	}
	exp := time.Now().Add(time.Minute)
	if err := s.PutMinted(ctx, MintedToken{JTI: "j1", Session: "m1", Upstream: "fx", Subject: "alice", Expiry: exp}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutMinted(ctx, MintedToken{JTI: "old", Session: "m1", Upstream: "fx", Subject: "alice", Expiry: time.Now().Add(-time.Second)}); err != nil {
		t.Fatal(err)
	}
	m, active, err := s.MintedStatus(ctx, "j1")
	if err != nil || !active || m.Session != "m1" || m.Upstream != "fx" {
		t.Fatalf("MintedStatus = %+v, %v, %v", m, active, err)
	}
	if _, active, _ := s.MintedStatus(ctx, "old"); active {
		t.Error("an expired token is active")
	}
	if _, _, err := s.MintedStatus(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown jti: %v", err)
	}
	// Killing the user's session makes the token inactive.
	if _, err := s.RevokeTree(ctx, "u1"); err != nil {
		t.Fatal(err)
	}
	if _, active, _ := s.MintedStatus(ctx, "j1"); active {
		t.Error("token of a revoked session is still active")
	}
	if ids, err := s.FindSessions(ctx, KindAgent, "spiffe://td/agent", true); err != nil || !slices.Equal(ids, []string{"a1"}) {
		t.Errorf("FindSessions by agent = %v, %v", ids, err)
	}
	if ids, err := s.FindSessions(ctx, KindUser, "alice", false); err != nil || !slices.Equal(ids, []string{"u1"}) {
		t.Errorf("FindSessions by user = %v, %v", ids, err)
	}
}

func TestRevokedTokens(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	if err := s.RevokeToken(ctx, "iss", "j1", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeToken(ctx, "iss", "j1", time.Now().Add(time.Hour)); err != nil {
		t.Fatalf("revoking twice: %v", err)
	}
	if err := s.RevokeToken(ctx, "iss", "gone", time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	got, err := s.RevokedTokens(ctx)
	if err != nil || len(got) != 1 || got[0].JTI != "j1" || got[0].Issuer != "iss" {
		t.Fatalf("RevokedTokens = %+v, %v", got, err)
	}
}

func TestAllowLists(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	if err := s.PutAllowList(ctx, "files", []byte("id: a\nrules: []\n")); err != nil {
		t.Fatal(err)
	}
	if err := s.PutAllowList(ctx, "files", []byte("id: b\nrules: []\n")); err != nil {
		t.Fatal(err)
	}
	got, err := s.ListAllowLists(ctx)
	if err != nil || len(got) != 1 || string(got[0].Document) != "id: b\nrules: []\n" {
		t.Fatalf("ListAllowLists = %+v, %v", got, err)
	}
	if err := s.DeleteAllowList(ctx, "files"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteAllowList(ctx, "files"); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleting twice: %v", err)
	}
}
