package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/sag-gateway/sag/internal/testutil"
)

// jwksKids returns the kids of a JWKS document, checking that no key
// carries private or symmetric material.
func jwksKids(t *testing.T, doc []byte) []string {
	t.Helper()
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(doc, &set); err != nil {
		t.Fatalf("JWKS: %v", err)
	}
	var kids []string
	for _, k := range set.Keys {
		for _, m := range privateJWKMembers {
			if _, ok := k[m]; ok {
				t.Errorf("JWKS key %v has private member %q", k["kid"], m)
			}
		}
		if k["kty"] != "EC" || k["crv"] != "P-256" || k["alg"] != "ES256" || k["use"] != "sig" {
			t.Errorf("JWKS key = %v", k)
		}
		kid, _ := k["kid"].(string)
		kids = append(kids, kid)
	}
	slices.Sort(kids)
	return kids
}

func keyFiles(t *testing.T, dir string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*.jwk"))
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func TestLoadKeysCreatesKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	keys, err := LoadKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("dir: %v, mode %v", err, fi.Mode().Perm())
	}
	files := keyFiles(t, dir)
	if len(files) != 1 {
		t.Fatalf("key files = %v", files)
	}
	fi, err := os.Stat(files[0])
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode = %v, want 0600", fi.Mode().Perm())
	}
	kid := keys.KeyID()
	if kid == "" || !strings.Contains(filepath.Base(files[0]), kid) {
		t.Errorf("kid %q, file %s", kid, files[0])
	}
	// The kid is the key's RFC 7638 thumbprint.
	k, ok := keys.PublicSet().LookupKeyID(kid)
	if !ok {
		t.Fatal("active kid not in the public set")
	}
	if tp, err := JWKThumbprint(k); err != nil || tp != kid {
		t.Errorf("thumbprint = %q (%v), kid %q", tp, err, kid)
	}
	// No temporary files are left behind (the lock file stays).
	all, _ := os.ReadDir(dir)
	if len(all) != 2 || all[0].Name() != ".lock" {
		t.Errorf("dir holds %v, want the key and the lock file", all)
	}

	again, err := LoadKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	if again.KeyID() != kid {
		t.Errorf("reload kid = %q, want %q", again.KeyID(), kid)
	}
	if n := len(keyFiles(t, dir)); n != 1 {
		t.Errorf("reload created keys: %d files", n)
	}
}

func TestKeysJWKSIsPublic(t *testing.T) {
	keys, err := LoadKeys(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := keys.Rotate(); err != nil {
		t.Fatal(err)
	}
	doc, err := keys.JWKS()
	if err != nil {
		t.Fatal(err)
	}
	if kids := jwksKids(t, doc); len(kids) != 2 {
		t.Errorf("kids = %v", kids)
	}
	set := keys.PublicSet()
	for i := 0; i < set.Len(); i++ {
		k, _ := set.Key(i)
		if priv, err := jwk.IsPrivateKey(k); err != nil || priv {
			t.Errorf("public set key %d: private=%v err=%v", i, priv, err)
		}
	}
}

func TestKeysRotate(t *testing.T) {
	dir := t.TempDir()
	keys, err := LoadKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	clock := testutil.NewClock(time.Now(), 0)
	iss := &Issuer{URL: tokIssuer, Keys: keys, Now: clock.Now}
	v, err := NewTokenVerifier(TokenOptions{
		Audience: tokAudience,
		Issuers:  map[string]KeySource{tokIssuer: StaticKeys{Set: keys.PublicSet}},
		Now:      clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	old, _, err := iss.Mint(Claims{Subject: "alice", Audience: Audience{tokAudience}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kids := []string{keys.KeyID()}

	kid, err := keys.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	if kid == kids[0] || keys.KeyID() != kid {
		t.Fatalf("Rotate = %q, KeyID = %q, old %q", kid, keys.KeyID(), kids[0])
	}
	kids = append(kids, kid)
	doc, _ := keys.JWKS()
	if got, want := jwksKids(t, doc), slices.Sorted(slices.Values(kids)); !slices.Equal(got, want) {
		t.Errorf("JWKS kids = %v, want %v", got, want)
	}
	// A token signed before the rotation still verifies; a new one is
	// signed with the new key.
	if _, err := v.Verify(context.Background(), old); err != nil {
		t.Errorf("token from before the rotation: %v", err)
	}
	fresh, _, err := iss.Mint(Claims{Subject: "alice", Audience: Audience{tokAudience}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if h := tokenHeaderOf(t, fresh); h["kid"] != kid || h["typ"] != "at+jwt" || h["alg"] != "ES256" {
		t.Errorf("new token header = %v", h)
	}
	if _, err := v.Verify(context.Background(), fresh); err != nil {
		t.Errorf("token after the rotation: %v", err)
	}

	// KeepKeys keys stay published; older ones are deleted.
	for i := 0; i < KeepKeys-1; i++ {
		kid, err := keys.Rotate()
		if err != nil {
			t.Fatal(err)
		}
		kids = append(kids, kid)
	}
	// KeepKeys+1 keys were made (the first and KeepKeys rotations).
	doc, _ = keys.JWKS()
	got := jwksKids(t, doc)
	want := slices.Sorted(slices.Values(kids[len(kids)-KeepKeys:]))
	if !slices.Equal(got, want) {
		t.Errorf("JWKS kids = %v, want the %d newest %v", got, KeepKeys, want)
	}
	if slices.Contains(got, kids[0]) {
		t.Errorf("oldest key %s still published", kids[0])
	}
	if n := len(keyFiles(t, dir)); n != KeepKeys {
		t.Errorf("%d key files, want %d", n, KeepKeys)
	}
	// A verifier that has not cached it refuses a token signed with a
	// deleted key (v itself serves it from its cache until it expires).
	v2, err := NewTokenVerifier(TokenOptions{
		Audience: tokAudience,
		Issuers:  map[string]KeySource{tokIssuer: StaticKeys{Set: keys.PublicSet}},
		Now:      clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v2.Verify(context.Background(), old); !isTokenError(err, "unknown key id") {
		t.Errorf("token signed with a deleted key: err = %v", err)
	}
	// Reloading gives the same active key and set.
	again, err := LoadKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	if again.KeyID() != keys.KeyID() {
		t.Errorf("reload active kid = %q, want %q", again.KeyID(), keys.KeyID())
	}
	doc, _ = again.JWKS()
	if got := jwksKids(t, doc); !slices.Equal(got, want) {
		t.Errorf("reloaded JWKS kids = %v", got)
	}
}

func tokenHeaderOf(t *testing.T, tok string) map[string]any {
	t.Helper()
	b, err := b64.DecodeString(strings.Split(tok, ".")[0])
	if err != nil {
		t.Fatal(err)
	}
	var h map[string]any
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatal(err)
	}
	return h
}

func TestLoadKeysRefusesBadFiles(t *testing.T) {
	pub, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pubJWK := mustJSON(t, publicJWK(t, pub.Public()))
	for name, content := range map[string][]byte{
		"not a JWK":           []byte("garbage"),
		"public key only":     pubJWK,
		"symmetric key":       []byte(`{"kty":"oct","k":"c2VjcmV0"}`),
		"RSA key, not EC key": mustJSON(t, publicJWKWithPrivate(t, &testSigner{priv: testRSAKey(t)})),
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "00000000000000000001-x.jwk"), content, 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := LoadKeys(dir); err == nil {
				t.Fatal("accepted")
			} else if strings.Contains(err.Error(), string(content)) {
				t.Errorf("error echoes the file: %v", err)
			}
		})
	}
}

func TestKeysConcurrentSignAndRotate(t *testing.T) {
	keys, err := LoadKeys(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 10; j++ {
				if _, err := keys.Sign("at+jwt", map[string]any{"sub": "x"}); err != nil {
					t.Error(err)
				}
				_, _ = keys.JWKS()
			}
		}()
	}
	for i := 0; i < 3; i++ {
		if _, err := keys.Rotate(); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
}

func TestIssuerMint(t *testing.T) {
	e := newTokenEnv(t, nil)
	iss := &Issuer{URL: tokIssuer, Keys: e.keys, Now: e.clock.Now}
	tok, c, err := iss.Mint(Claims{
		Issuer: "https://ignored.example.com", Subject: "alice", Audience: Audience{tokAudience},
		Scope: "tools:call", IssuedAt: 1, Expiry: 2, JTI: "chosen",
		Cnf: &Confirmation{JKT: rfc9449JKT},
	}, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if c.Issuer != tokIssuer || c.IssuedAt != testNow.Unix() || c.Expiry != testNow.Add(10*time.Minute).Unix() || c.JTI == "chosen" || len(c.JTI) < 22 {
		t.Errorf("minted claims = %+v", c)
	}
	got, err := e.v.Verify(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	if got.JTI != c.JTI || got.Cnf == nil || got.Cnf.JKT != rfc9449JKT || got.Scope != "tools:call" {
		t.Errorf("verified claims = %+v", got)
	}
	_, c2, err := iss.Mint(Claims{Subject: "alice", Audience: Audience{tokAudience}}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if c2.JTI == c.JTI {
		t.Error("two mints share a jti")
	}
	for name, c := range map[string]Claims{
		"no sub": {Audience: Audience{tokAudience}},
		"no aud": {Subject: "alice"},
	} {
		if _, _, err := iss.Mint(c, time.Minute); err == nil {
			t.Errorf("%s: minted", name)
		}
	}
	if _, _, err := iss.Mint(Claims{Subject: "alice", Audience: Audience{tokAudience}}, 0); err == nil {
		t.Error("zero lifetime: minted")
	}
}

func TestFileKeys(t *testing.T) {
	e := newTokenEnv(t, nil)
	dir := t.TempDir()
	doc, _ := e.keys.JWKS()
	good := filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(good, doc, 0o600); err != nil {
		t.Fatal(err)
	}
	src, err := FileKeys(good)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewTokenVerifier(TokenOptions{Audience: tokAudience, Issuers: map[string]KeySource{tokIssuer: src}, Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(context.Background(), e.token(t)); err != nil {
		t.Errorf("token verified with FileKeys: %v", err)
	}

	priv := mustJSON(t, map[string]any{"keys": []any{publicJWKWithPrivate(t, e.signer)}})
	for name, content := range map[string][]byte{
		"private key":   priv,
		"symmetric key": []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`),
		"not a JWKS":    []byte("garbage"),
	} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		if err := os.WriteFile(p, content, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := FileKeys(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := FileKeys(filepath.Join(dir, "missing.json")); err == nil {
		t.Error("missing file: accepted")
	}
}

// jwksServer serves the JWKS of keys and counts the requests.
type jwksServer struct {
	*httptest.Server
	keys     *Keys
	requests atomic.Int64
	fail     atomic.Bool
}

func newJWKSServer(t *testing.T, keys *Keys) *jwksServer {
	t.Helper()
	s := &jwksServer{keys: keys}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		if s.fail.Load() {
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		doc, err := s.keys.JWKS()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(doc)
	}))
	t.Cleanup(s.Close)
	return s
}

// newRemoteKeys registers the server's JWKS and waits for the first
// background fetch, so that the forced-refresh budget is still unused.
func newRemoteKeys(t *testing.T, s *jwksServer, wait bool) *RemoteKeys {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	rk, err := NewRemoteKeys(ctx, s.URL, s.Client())
	if err != nil {
		t.Fatal(err)
	}
	if wait {
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		defer wcancel()
		if !rk.cache.Ready(wctx, s.URL) {
			t.Fatal("JWKS never fetched")
		}
	}
	return rk
}

func remoteVerifier(t *testing.T, rk *RemoteKeys) *TokenVerifier {
	t.Helper()
	v, err := NewTokenVerifier(TokenOptions{Audience: tokAudience, Issuers: map[string]KeySource{tokIssuer: rk}})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestRemoteKeysRotation(t *testing.T) {
	keys, err := LoadKeys(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv := newJWKSServer(t, keys)
	rk := newRemoteKeys(t, srv, true)
	v := remoteVerifier(t, rk)
	iss := &Issuer{URL: tokIssuer, Keys: keys}
	mint := func() string {
		tok, _, err := iss.Mint(Claims{Subject: "alice", Audience: Audience{tokAudience}}, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	ctx := context.Background()
	if _, err := v.Verify(ctx, mint()); err != nil {
		t.Fatalf("token: %v", err)
	}
	if n := srv.requests.Load(); n != 1 {
		t.Errorf("%d JWKS requests after the first token, want 1", n)
	}
	// The issuer rotates; a token with the new kid forces a refresh.
	if _, err := keys.Rotate(); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ctx, mint()); err != nil {
		t.Fatalf("token with the new kid: %v", err)
	}
	if n := srv.requests.Load(); n != 2 {
		t.Errorf("%d JWKS requests after the rotation, want 2", n)
	}
}

func TestRemoteKeysUnknownKidFlood(t *testing.T) {
	keys, err := LoadKeys(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv := newJWKSServer(t, keys)
	rk := newRemoteKeys(t, srv, true)
	v := remoteVerifier(t, rk)
	s := signerOf(t, keys)
	claims := map[string]any{"iss": tokIssuer, "sub": "alice", "jti": "j-1", "aud": tokAudience, "iat": time.Now().Unix(), "exp": time.Now().Add(time.Minute).Unix()}
	before := srv.requests.Load()
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 25; j++ {
				tok := s.sign(t, map[string]any{"typ": "at+jwt", "jwk": nil, "kid": NewID()}, claims)
				if _, err := v.Verify(context.Background(), tok); !isTokenError(err, "unknown key id") {
					t.Errorf("made-up kid: err = %v", err)
				}
			}
		}()
	}
	wg.Wait()
	if n := srv.requests.Load() - before; n > 1 {
		t.Errorf("200 made-up kids caused %d JWKS fetches, want at most 1 per %v", n, minRefresh)
	}
	// Genuine tokens still verify from the cached set.
	tok := s.sign(t, map[string]any{"typ": "at+jwt", "jwk": nil, "kid": keys.KeyID()}, claims)
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Errorf("genuine token during the flood: %v", err)
	}
}

func TestRemoteKeysUnavailable(t *testing.T) {
	keys, err := LoadKeys(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv := newJWKSServer(t, keys)
	srv.fail.Store(true)
	rk := newRemoteKeys(t, srv, false)
	v := remoteVerifier(t, rk)
	iss := &Issuer{URL: tokIssuer, Keys: keys}
	tok, _, err := iss.Mint(Claims{Subject: "alice", Audience: Audience{tokAudience}}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.Verify(context.Background(), tok)
	var te *OAuthError
	if err == nil || errors.As(err, &te) {
		t.Fatalf("err = %v, want a key-source failure (not invalid_token)", err)
	}
}

// TestLoadKeysShared: processes starting together on one empty keys
// directory (replicas on a shared volume) end with one key, all of them
// active on it; one rotating is seen by another's Reload.
func TestLoadKeysShared(t *testing.T) {
	dir := t.TempDir()
	const n = 8
	loaded := make([]*Keys, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			k, err := LoadKeys(dir)
			if err != nil {
				t.Error(err)
				return
			}
			loaded[i] = k
		})
	}
	wg.Wait()
	files, _ := filepath.Glob(filepath.Join(dir, "*.jwk"))
	if len(files) != 1 {
		t.Fatalf("%d key files after %d concurrent starts, want 1", len(files), n)
	}
	for _, k := range loaded {
		if k == nil || k.KeyID() != loaded[0].KeyID() {
			t.Fatal("the starts disagree on the active key")
		}
	}
	kid, err := loaded[0].Rotate()
	if err != nil {
		t.Fatal(err)
	}
	if err := loaded[1].Reload(); err != nil || loaded[1].KeyID() != kid {
		t.Errorf("Reload after another's rotation: %v, active %s, want %s", err, loaded[1].KeyID(), kid)
	}
}
