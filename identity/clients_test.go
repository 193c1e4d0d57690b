package identity

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// docServer serves a client ID metadata document over TLS on loopback and
// returns a fetcher that trusts it (private addresses allowed).
func docServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, *MetadataDocuments) {
	t.Helper()
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	roots := srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	return srv, NewMetadataDocuments(MetadataDocumentOptions{AllowPrivate: true, TLS: &tls.Config{RootCAs: roots}, Timeout: 500 * time.Millisecond})
}

func TestMetadataDocuments(t *testing.T) {
	var fetches atomic.Int32
	var body, cacheControl atomic.Value
	srv, docs := docServer(t, func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		w.Header().Set("Content-Type", "application/json")
		if cc, _ := cacheControl.Load().(string); cc != "" {
			w.Header().Set("Cache-Control", cc)
		}
		w.Write([]byte(body.Load().(string)))
	})
	id := srv.URL + "/client.json"
	ctx := context.Background()
	good := `{"client_id":"` + id + `","client_name":"Doc Client","redirect_uris":["http://127.0.0.1:3000/cb"],"token_endpoint_auth_method":"none"}`

	body.Store(good)
	cacheControl.Store("max-age=3600")
	c, err := docs.Client(ctx, id)
	if err != nil || c.Name != "Doc Client" || !c.public() || !c.allowsRedirect("http://127.0.0.1:4000/cb") {
		t.Fatalf("good document: %+v, %v", c, err)
	}
	if _, err := docs.Client(ctx, id); err != nil || fetches.Load() != 1 {
		t.Fatalf("cached document fetched again: %d fetches, %v", fetches.Load(), err)
	}

	for name, doc := range map[string]string{
		"another client_id": `{"client_id":"https://other.example/c","redirect_uris":["http://127.0.0.1:3000/cb"]}`,
		"a secret":          `{"client_id":"` + id + `","redirect_uris":["http://127.0.0.1:3000/cb"],"client_secret":"s"}`,
		"secret auth":       `{"client_id":"` + id + `","redirect_uris":["http://127.0.0.1:3000/cb"],"token_endpoint_auth_method":"client_secret_basic"}`,
		"no redirect URIs":  `{"client_id":"` + id + `"}`,
		"bad redirect URI":  `{"client_id":"` + id + `","redirect_uris":["javascript:alert(1)"]}`,
		"oversized":         `{"client_id":"` + id + `","redirect_uris":["http://127.0.0.1:3000/cb"],"client_name":"` + strings.Repeat("x", maxMetadataDocument) + `"}`,
		"not JSON":          `<html>`,
	} {
		body.Store(doc)
		cacheControl.Store("no-store")
		docs.cache.Remove(id)
		if c, err := docs.Client(ctx, id); err == nil {
			t.Errorf("%s: accepted %+v", name, c)
		}
	}

	// no-store: fetched on every use.
	body.Store(good)
	before := fetches.Load()
	docs.Client(ctx, id)
	docs.Client(ctx, id)
	if got := fetches.Load() - before; got != 2 {
		t.Errorf("no-store document fetched %d times for two uses, want 2", got)
	}
}

func TestMetadataDocumentLimits(t *testing.T) {
	ctx := context.Background()
	t.Run("slow", func(t *testing.T) {
		release := make(chan struct{})
		srv, docs := docServer(t, func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		})
		defer close(release)
		start := time.Now()
		if _, err := docs.Client(ctx, srv.URL+"/c.json"); err == nil {
			t.Fatal("a document that never comes was accepted")
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("the fetch took %v, want it cut at the timeout", d)
		}
	})
	t.Run("redirect", func(t *testing.T) {
		srv, docs := docServer(t, func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "https://127.0.0.1:1/elsewhere", http.StatusFound)
		})
		if _, err := docs.Client(ctx, srv.URL+"/c.json"); err == nil || !strings.Contains(err.Error(), "redirect") {
			t.Fatalf("redirect followed or not said: %v", err)
		}
	})
	t.Run("private address", func(t *testing.T) {
		var fetched atomic.Bool
		srv := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { fetched.Store(true) }))
		defer srv.Close()
		roots := srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
		docs := NewMetadataDocuments(MetadataDocumentOptions{TLS: &tls.Config{RootCAs: roots}})
		if _, err := docs.Client(ctx, srv.URL+"/c.json"); err == nil || !strings.Contains(err.Error(), "not public") || fetched.Load() {
			t.Fatalf("loopback document: %v (fetched %v)", err, fetched.Load())
		}
	})
}

func TestPublicAddr(t *testing.T) {
	for addr, want := range map[string]bool{
		"93.184.215.14": true, "2606:4700::1111": true,
		"127.0.0.1": false, "10.1.2.3": false, "172.16.0.1": false, "192.168.1.1": false, "169.254.169.254": false,
		"100.64.0.1": false, "0.0.0.0": false, "::1": false, "fe80::1": false, "fc00::1": false, "224.0.0.1": false,
		"64:ff9b::a00:1": false, "198.18.0.1": false,
	} {
		if got := publicAddr(netip.MustParseAddr(addr)); got != want {
			t.Errorf("publicAddr(%s) = %v, want %v", addr, got, want)
		}
	}
}

func TestRedirectURIs(t *testing.T) {
	c := &OAuthClient{RedirectURIs: []string{"http://127.0.0.1:8000/cb", "https://app.example/cb", "com.example.app:/cb"}}
	for uri, want := range map[string]bool{
		"http://127.0.0.1:8000/cb": true, "http://127.0.0.1:9/cb": true, "https://app.example/cb": true, "com.example.app:/cb": true,
		"http://127.0.0.1:9/other": false, "http://localhost:8000/cb": false, "https://app.example:444/cb": false,
		"https://app.example/cb?x=1": false, "http://127.0.0.1:9/cb?x=1": false, "https://evil.example/cb": false,
	} {
		if got := c.allowsRedirect(uri); got != want {
			t.Errorf("allowsRedirect(%s) = %v, want %v", uri, got, want)
		}
	}
	for uri, ok := range map[string]bool{
		"https://app.example/cb": true, "http://127.0.0.1/cb": true, "http://localhost:3000/cb": true, "com.example.app:/cb": true,
		"http://app.example/cb": false, "javascript:alert(1)": false, "https://app.example/cb#x": false, "/cb": false, "https://u:p@app.example/cb": false,
	} {
		if err := checkRedirectURI(uri); (err == nil) != ok {
			t.Errorf("checkRedirectURI(%s) = %v, want ok=%v", uri, err, ok)
		}
	}
}

func TestPasswordHash(t *testing.T) {
	h, err := HashPassword("pw")
	if err != nil {
		t.Fatal(err)
	}
	u, err := NewUsers([]LocalUser{{Name: "alice", PasswordHash: h, Groups: []string{"g"}}})
	if err != nil {
		t.Fatal(err)
	}
	if g, ok := u.Check("alice", "pw"); !ok || len(g) != 1 {
		t.Fatal("the right password was refused")
	}
	for _, c := range [][2]string{{"alice", "pW"}, {"alice", ""}, {"bob", "pw"}} {
		if _, ok := u.Check(c[0], c[1]); ok {
			t.Errorf("Check(%q, %q) accepted", c[0], c[1])
		}
	}
	for _, bad := range []string{"", "pw", "$argon2i$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=4194304,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "$argon2id$v=19$m=65536,t=99,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=16$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"} {
		if _, err := NewUsers([]LocalUser{{Name: "x", PasswordHash: bad}}); err == nil {
			t.Errorf("hash %q accepted", bad)
		}
	}
}

// FuzzMetadataDocument: whatever a client's server sends, an accepted
// document describes the client its URL names, public, with only redirect
// URIs SAG allows; and any Cache-Control gives a lifetime of 0 or between a
// minute and a day.
func FuzzMetadataDocument(f *testing.F) {
	const id = "https://app.example/client.json"
	f.Add([]byte(`{"client_id":"`+id+`","redirect_uris":["http://127.0.0.1:3000/cb"]}`), "max-age=60")
	f.Add([]byte(`{"client_id":"`+id+`","redirect_uris":["com.example.app:/cb"],"token_endpoint_auth_method":"none","grant_types":["refresh_token"]}`), "no-store")
	f.Add([]byte(`{"client_id":"`+id+`","redirect_uris":["https://app.example/cb"],"secret_hash":"00"}`), "max-age=999999999999")
	f.Add([]byte(`{"client_id":"`+id+`","client_id":"https://evil.example/c","redirect_uris":["javascript:x"]}`), "public, max-age=-1")
	f.Fuzz(func(t *testing.T, body []byte, cc string) {
		if ttl := cacheLifetime(cc); ttl != 0 && (ttl < minMetadataCache || ttl > maxMetadataCache) {
			t.Fatalf("cacheLifetime(%q) = %v", cc, ttl)
		}
		c, err := parseMetadataDocument(id, body)
		if err != nil {
			return
		}
		if c.ID != id || !c.public() || c.SecretHash != "" || c.FirstParty || len(c.RedirectURIs) == 0 {
			t.Fatalf("accepted %+v from %q", c, body)
		}
		for _, r := range c.RedirectURIs {
			if checkRedirectURI(r) != nil {
				t.Fatalf("accepted redirect URI %q", r)
			}
		}
	})
}
