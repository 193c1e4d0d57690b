package identity_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/sag-gateway/sag/identity"
)

// FuzzExchangeRequest feeds arbitrary form bodies, with a fresh valid DPoP
// proof, to the token endpoint. Whatever the body, the answer is an RFC
// 6749 §5.2 client error (never a token, never a 5xx) whose JSON body names
// an error code and does not echo the body.
func FuzzExchangeRequest(f *testing.F) {
	env := newSTSEnv(f, nil)
	subject := env.subject(f, nil)
	valid := url.Values{
		"grant_type":         {identity.GrantTypeTokenExchange},
		"subject_token":      {subject},
		"subject_token_type": {identity.TokenTypeAccessToken},
		"actor_token":        {"actor-token-forged"},
		"actor_token_type":   {identity.TokenTypeJWT},
	}
	f.Add(valid.Encode(), "application/x-www-form-urlencoded")
	f.Add(valid.Encode()+"&audience=a&resource=b", "application/x-www-form-urlencoded; charset=UTF-8")
	f.Add(valid.Encode()+"&scope=a%20%20b", "application/x-www-form-urlencoded")
	f.Add("grant_type=a&grant_type=b", "application/x-www-form-urlencoded")
	f.Add("a=%zz;b=c", "application/x-www-form-urlencoded")
	f.Add("resource=%3A%2F%2F&audience=", "application/x-www-form-urlencoded")
	f.Add(`{"grant_type":"x"}`, "application/json")
	f.Add("", "")
	key, err := identity.NewDPoPKey()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body, contentType string) {
		proof, err := key.Proof(http.MethodPost, stsTokenURL, "", "")
		if err != nil {
			t.Fatal(err)
		}
		r := httptest.NewRequest(http.MethodPost, stsTokenURL, strings.NewReader(body))
		r.Header.Set("Content-Type", contentType)
		r.Header.Set("DPoP", proof)
		w := httptest.NewRecorder()
		env.ex.ServeHTTP(w, r)
		if w.Code != http.StatusBadRequest && w.Code != http.StatusRequestEntityTooLarge {
			t.Fatalf("status %d for %q: %s", w.Code, body, w.Body)
		}
		var e map[string]string
		if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e["error"] == "" {
			t.Fatalf("error body %q: %v", w.Body, err)
		}
		if len(body) >= 16 && strings.Contains(w.Body.String(), body) {
			t.Fatalf("error body echoes the request: %s", w.Body)
		}
		if strings.Contains(w.Body.String(), subject) || strings.Contains(w.Body.String(), proof) {
			t.Fatalf("error body echoes a token or proof: %s", w.Body)
		}
	})
}
