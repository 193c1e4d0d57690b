package identity

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

// FederatedProvider configures sign-in through an external OpenID Provider.
type FederatedProvider struct {
	// Name identifies the provider; it prefixes its users' subjects
	// ("NAME:" + the subject claim), so that no provider can name a local
	// user or another provider's.
	Name string
	// Label is the sign-in button's text; default Name.
	Label string
	// Issuer is the provider's issuer URL (OpenID Connect Discovery).
	Issuer       string
	ClientID     string
	ClientSecret string
	// Scopes asked for; default openid, profile, email.
	Scopes []string
	// SubjectClaim names the user (default sub); GroupsClaim holds their
	// groups (default groups).
	SubjectClaim, GroupsClaim string
	// GroupMap maps the provider's groups to the groups allow-lists name;
	// when it is set, groups it does not list are dropped.
	GroupMap map[string]string
}

// federation is one configured provider, discovered on first use.
type federation struct {
	cfg FederatedProvider
	// redirect is the gateway's callback URL.
	redirect string
	http     *http.Client

	mu       sync.Mutex
	provider *oidc.Provider
	oauth    *oauth2.Config
	verifier *oidc.IDTokenVerifier
}

// federationTimeout bounds every request to a provider.
const federationTimeout = 10 * time.Second

func newFederation(p FederatedProvider, redirect string) (*federation, error) {
	switch {
	case p.Name == "" || strings.ContainsAny(p.Name, ": "):
		return nil, fmt.Errorf("a federated provider needs a name without ':' or spaces, got %q", p.Name)
	case p.Issuer == "" || p.ClientID == "":
		return nil, fmt.Errorf("federated provider %s: issuer and client_id are required", p.Name)
	}
	if p.Label == "" {
		p.Label = p.Name
	}
	if len(p.Scopes) == 0 {
		p.Scopes = []string{oidc.ScopeOpenID, "profile", "email"}
	}
	p.SubjectClaim = cmp.Or(p.SubjectClaim, "sub")
	p.GroupsClaim = cmp.Or(p.GroupsClaim, "groups")
	return &federation{cfg: p, redirect: redirect, http: &http.Client{Timeout: federationTimeout}}, nil
}

// discover fetches the provider's metadata once (a failure is retried on
// the next sign-in).
func (f *federation) discover(ctx context.Context) (*oauth2.Config, *oidc.IDTokenVerifier, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.oauth != nil {
		return f.oauth, f.verifier, nil
	}
	p, err := oidc.NewProvider(oidc.ClientContext(ctx, f.http), f.cfg.Issuer)
	if err != nil {
		return nil, nil, fmt.Errorf("discovery of %s: %w", f.cfg.Issuer, err)
	}
	f.provider = p
	f.oauth = &oauth2.Config{ClientID: f.cfg.ClientID, ClientSecret: f.cfg.ClientSecret, Endpoint: p.Endpoint(), RedirectURL: f.redirect, Scopes: f.cfg.Scopes}
	// The verifier checks the signature (the provider's JWKS), iss, aud
	// (our client_id) and exp (OpenID Connect Core §3.1.3.7).
	f.verifier = p.VerifierContext(oidc.ClientContext(context.WithoutCancel(ctx), f.http), &oidc.Config{ClientID: f.cfg.ClientID})
	return f.oauth, f.verifier, nil
}

// fedLogin is a sign-in at a provider in progress.
type fedLogin struct {
	provider *federation
	pending  string // the pending authorization request's id
	nonce    string
	verifier string // PKCE
	expires  time.Time
}

// authCodeURL starts a sign-in: where to send the browser.
func (f *federation) authCodeURL(ctx context.Context, state string, l *fedLogin) (string, error) {
	cfg, _, err := f.discover(ctx)
	if err != nil {
		return "", err
	}
	return cfg.AuthCodeURL(state, oidc.Nonce(l.nonce), oauth2.S256ChallengeOption(l.verifier)), nil
}

// finish redeems the provider's code and returns the user's subject (with
// the provider's prefix) and groups.
func (f *federation) finish(ctx context.Context, code string, l *fedLogin) (string, []string, error) {
	cfg, verifier, err := f.discover(ctx)
	if err != nil {
		return "", nil, err
	}
	ctx = oidc.ClientContext(ctx, f.http)
	tok, err := cfg.Exchange(ctx, code, oauth2.VerifierOption(l.verifier))
	if err != nil {
		return "", nil, fmt.Errorf("the provider did not redeem its code: %w", err)
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return "", nil, errors.New("the provider sent no ID token")
	}
	idt, err := verifier.Verify(ctx, raw)
	if err != nil {
		return "", nil, fmt.Errorf("the ID token was refused: %w", err)
	}
	// OpenID Connect Core §3.1.3.7 item 11: the nonce must be ours.
	if idt.Nonce != l.nonce {
		return "", nil, errors.New("the ID token's nonce is not this sign-in's")
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		return "", nil, err
	}
	if _, ok := claims[f.cfg.SubjectClaim]; !ok {
		// Providers may keep profile claims to the UserInfo endpoint
		// (OpenID Connect Core §5.4); its sub must be the ID token's
		// (§5.3.2).
		if err := f.userInfo(ctx, tok, idt.Subject, claims); err != nil {
			return "", nil, err
		}
	}
	sub, _ := claims[f.cfg.SubjectClaim].(string)
	if sub == "" {
		return "", nil, fmt.Errorf("the ID token has no %s claim", f.cfg.SubjectClaim)
	}
	return f.cfg.Name + ":" + sub, f.groups(claims[f.cfg.GroupsClaim]), nil
}

// userInfo adds the UserInfo endpoint's claims that the ID token lacks.
func (f *federation) userInfo(ctx context.Context, tok *oauth2.Token, subject string, claims map[string]any) error {
	f.mu.Lock()
	p := f.provider // discovered by finish
	f.mu.Unlock()
	ui, err := p.UserInfo(ctx, oauth2.StaticTokenSource(tok))
	if err != nil {
		return fmt.Errorf("the provider's UserInfo endpoint: %w", err)
	}
	if ui.Subject != subject {
		return errors.New("the UserInfo response is about another subject")
	}
	var more map[string]any
	if err := ui.Claims(&more); err != nil {
		return err
	}
	for k, v := range more {
		if _, ok := claims[k]; !ok {
			claims[k] = v
		}
	}
	return nil
}

// groups maps the provider's groups claim (an array of strings, or one
// string) through GroupMap.
func (f *federation) groups(v any) []string {
	var in []string
	switch g := v.(type) {
	case string:
		in = []string{g}
	case []any:
		for _, e := range g {
			if s, ok := e.(string); ok {
				in = append(in, s)
			}
		}
	}
	if len(f.cfg.GroupMap) == 0 {
		return in
	}
	var out []string
	for _, g := range in {
		if m, ok := f.cfg.GroupMap[g]; ok {
			out = append(out, m)
		}
	}
	return out
}

// fedLoginTTL is how long a person has at their provider.
const fedLoginTTL = 10 * time.Minute

// federate sends the browser to the chosen provider (authorization code
// with PKCE, a nonce and a state bound to the pending request).
func (s *AuthServer) federate(w http.ResponseWriter, r *http.Request, id string, p *pendingAuthz) {
	var f *federation
	for _, c := range s.federations {
		if c.cfg.Name == r.PostForm.Get("provider") {
			f = c
		}
	}
	if f == nil {
		s.next(w, r, id, p, "Unknown identity provider.")
		return
	}
	l := &fedLogin{provider: f, pending: id, nonce: randomToken(), verifier: oauth2.GenerateVerifier(), expires: s.now().Add(fedLoginTTL)}
	state, err := s.putFlow(r.Context(), flowFedLogin, fedLoginRecord{Provider: f.cfg.Name, Pending: id, Nonce: l.nonce, Verifier: l.verifier, Expires: l.expires}, l.expires)
	if err != nil {
		s.flowFailed(w, "sign-in at "+f.cfg.Name, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), federationTimeout)
	defer cancel()
	u, err := f.authCodeURL(ctx, state, l)
	if err != nil {
		s.log.Error("federated sign-in: provider unavailable", "provider", f.cfg.Name, "error", err)
		s.next(w, r, id, p, "The identity provider "+f.cfg.Label+" cannot be reached; try again later.")
		return
	}
	s.log.Info("federated sign-in started", "provider", f.cfg.Name, "client", p.client.ID)
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, u, http.StatusSeeOther)
}

// ServeCallback answers GET /oauth/callback: a provider sends the person
// back with its code (or an error) and the state federate chose. The state
// is good once, in the browser that started the sign-in.
func (s *AuthServer) ServeCallback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	l, p, err := s.takeFedLogin(r.Context(), q.Get("state"))
	if err != nil && !errors.Is(err, errFlowGone) {
		s.log.Error("federated sign-in: state unreadable", "error", err)
		s.errorPage(w, http.StatusServiceUnavailable, "The sign-in could not be read; try again.")
		return
	}
	browser, _ := r.Cookie(browserCookie)
	if err != nil || browser == nil || browser.Value != p.browser {
		s.log.Info("federated sign-in refused", "reason", "unknown or used state, or another browser")
		s.errorPage(w, http.StatusForbidden, "This sign-in expired or was not started in this browser. Go back to the application and start again.")
		return
	}
	label := l.provider.cfg.Label
	if e := q.Get("error"); e != "" {
		s.log.Info("federated sign-in refused by the provider", "provider", l.provider.cfg.Name, "error", e)
		s.next(w, r, l.pending, p, "The identity provider "+label+" refused the sign-in ("+e+").")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), federationTimeout)
	defer cancel()
	subject, groups, err := l.provider.finish(ctx, q.Get("code"), l)
	if err != nil {
		s.log.Warn("federated sign-in failed", "provider", l.provider.cfg.Name, "error", err)
		s.next(w, r, l.pending, p, "The sign-in with "+label+" failed; try again.")
		return
	}
	s.signedIn(w, r, l.pending, p, subject, groups)
}

// takeFedLogin takes the sign-in at a provider that state names (good
// once) and returns it with its pending request.
func (s *AuthServer) takeFedLogin(ctx context.Context, state string) (*fedLogin, *pendingAuthz, error) {
	var rec fedLoginRecord
	if _, err := s.takeFlow(ctx, flowFedLogin, state, &rec); err != nil {
		return nil, nil, err
	}
	l := &fedLogin{pending: rec.Pending, nonce: rec.Nonce, verifier: rec.Verifier, expires: rec.Expires}
	for _, f := range s.federations {
		if f.cfg.Name == rec.Provider {
			l.provider = f
		}
	}
	if l.provider == nil {
		return nil, nil, errFlowGone // the provider is no longer configured
	}
	p, err := s.getPending(ctx, rec.Pending)
	if err != nil {
		return nil, nil, err
	}
	return l, p, nil
}
