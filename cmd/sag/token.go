package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/server"
)

// cmdToken prints an access token from the gateway's development issuer:
// signed with the gateway's own keys (DATA/keys), so the gateway trusts it.
func cmdToken(args []string) error {
	fs := flag.NewFlagSet("sag token", flag.ContinueOnError)
	sub := fs.String("sub", "", "the user (`sub` claim); required")
	agent := fs.String("agent", "", "the agent acting for the user (act.sub), a `SPIFFE_ID`; it must then authenticate as that agent")
	jkt := fs.String("jkt", "", "bind the token to this DPoP key `THUMBPRINT` (cnf.jkt)")
	keyFile := fs.String("dpop-key", "", "bind the token to the DPoP key in `FILE` (a private JWK); a missing FILE is created, and said so on stderr")
	aud := fs.String("aud", "", "audience `URL` (default: the gateway's public URL)")
	scope := fs.String("scope", "", "space-separated `SCOPES`")
	ttl := fs.Duration("ttl", time.Hour, "lifetime")
	data := fs.String("data", "./sag-data", "the gateway's data `DIR` (its signing keys)")
	gw := fs.String("url", "http://127.0.0.1:8080", "the gateway's public base `URL` (the issuer)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *sub == "" {
		return errors.New("--sub is required")
	}
	if *jkt != "" && *keyFile != "" {
		return errors.New("--jkt and --dpop-key are mutually exclusive")
	}
	if *keyFile != "" {
		_, err := os.Stat(*keyFile)
		created := errors.Is(err, os.ErrNotExist)
		k, err := identity.LoadOrCreateDPoPKey(*keyFile)
		if err != nil {
			return err
		}
		if created {
			fmt.Fprintf(os.Stderr, "sag token: created a new DPoP key in %s\n", *keyFile)
		}
		*jkt = k.Thumbprint()
	}
	tok, err := devToken(*data, *gw, devClaims{sub: *sub, agent: *agent, jkt: *jkt, aud: *aud, scope: *scope}, *ttl)
	if err != nil {
		return err
	}
	fmt.Println(tok)
	return nil
}

type devClaims struct{ sub, agent, jkt, aud, scope string }

// devToken mints a token with the gateway keys in dataDir, issued by base.
func devToken(dataDir, base string, c devClaims, ttl time.Duration) (string, error) {
	base = strings.TrimRight(base, "/")
	if u, err := url.Parse(base); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("--url %q is not the gateway's http(s) base URL", base)
	}
	if _, err := os.Stat(filepath.Join(dataDir, server.KeysDir)); err != nil {
		return "", fmt.Errorf("no gateway keys in %s (start the gateway with --data %s once): %w", dataDir, dataDir, err)
	}
	keys, err := identity.LoadKeys(filepath.Join(dataDir, server.KeysDir))
	if err != nil {
		return "", err
	}
	claims := identity.Claims{Subject: c.sub, Audience: identity.Audience{base}, Scope: c.scope, ClientID: "sag-cli"}
	if c.aud != "" {
		claims.Audience = identity.Audience{c.aud}
	}
	if c.jkt != "" {
		claims.Cnf = &identity.Confirmation{JKT: c.jkt}
	}
	if c.agent != "" {
		claims.Act = &identity.Actor{Sub: c.agent}
	}
	tok, _, err := (&identity.Issuer{URL: base, Keys: keys}).Mint(claims, ttl)
	return tok, err
}

// clientAuth are the authentication flags of the client commands (tools,
// call): a token (DPoP-bound with --dpop-key, else sent as a bearer token),
// or, for development, a token minted from the gateway's data directory
// for --sub with a fresh DPoP key.
type clientAuth struct {
	token, keyFile, data, sub, scope string
	workloadAPI                      string
}

func (a *clientAuth) register(fs *flag.FlagSet) {
	fs.StringVar(&a.token, "token", os.Getenv("SAG_TOKEN"), "access `TOKEN` (default $SAG_TOKEN)")
	fs.StringVar(&a.keyFile, "dpop-key", "", "DPoP private key `FILE` the token is bound to (sends DPoP proofs); it must exist: 'sag token --dpop-key FILE' creates one")
	fs.StringVar(&a.data, "data", "", "development: mint a DPoP-bound token with the gateway keys in `DIR` (needs --sub)")
	fs.StringVar(&a.sub, "sub", "", "development: the `USER` of the minted token")
	fs.StringVar(&a.scope, "scope", "", "development: `SCOPES` of the minted token")
	fs.StringVar(&a.workloadAPI, "workload-api", "", "SPIFFE Workload API `ADDR` (unix:///path): present this agent's X.509-SVID over mTLS and verify the gateway's")
}

// client returns the HTTP client for mcpURL, or nil for no authentication.
// With --workload-api the client speaks mTLS with the agent's X.509-SVID;
// close releases the Workload API connection.
func (a *clientAuth) client(ctx context.Context, mcpURL string) (hc *http.Client, close func(), err error) {
	close = func() {}
	var base http.RoundTripper = http.DefaultTransport
	if a.workloadAPI != "" {
		src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(a.workloadAPI)))
		if err != nil {
			return nil, nil, fmt.Errorf("workload API: %w", err)
		}
		svid, err := src.GetX509SVID()
		if err != nil {
			src.Close()
			return nil, nil, fmt.Errorf("workload API: %w", err)
		}
		t := http.DefaultTransport.(*http.Transport).Clone()
		// The gateway must be a member of the agent's own trust domain.
		t.TLSClientConfig = tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeMemberOf(svid.ID.TrustDomain()))
		base, close = t, func() { src.Close() }
	}
	hc, err = a.httpClient(mcpURL, base)
	if err != nil {
		close()
		return nil, nil, err
	}
	return hc, close, nil
}

func (a *clientAuth) httpClient(mcpURL string, base http.RoundTripper) (*http.Client, error) {
	tok, key := a.token, (*identity.DPoPKey)(nil)
	var err error
	switch {
	case a.data != "" || a.sub != "":
		if a.data == "" || a.sub == "" || a.token != "" {
			return nil, errors.New("--data and --sub go together, without --token")
		}
		if key, err = identity.NewDPoPKey(); err != nil {
			return nil, err
		}
		base := strings.TrimSuffix(mcpURL, "/mcp")
		if tok, err = devToken(a.data, base, devClaims{sub: a.sub, jkt: key.Thumbprint(), scope: a.scope}, time.Hour); err != nil {
			return nil, err
		}
	case a.token == "":
		if a.keyFile != "" {
			return nil, errors.New("--dpop-key needs --token")
		}
		return &http.Client{Transport: base}, nil
	case a.keyFile != "":
		if key, err = loadDPoPKey(a.keyFile); err != nil {
			return nil, err
		}
	}
	if key == nil {
		return &http.Client{Transport: &bearer{base: base, token: tok}}, nil
	}
	return &http.Client{Transport: &identity.DPoPTransport{Base: base, Key: key, Token: func(context.Context) (string, error) { return tok, nil }}}, nil
}

// loadDPoPKey reads the DPoP key a token is bound to. Unlike sag token, the
// client commands never create one: a new key cannot match the token, and
// a mistyped path must not pass for it.
func loadDPoPKey(path string) (*identity.DPoPKey, error) {
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("--dpop-key %s: no such file (the key the token is bound to; 'sag token --dpop-key FILE' creates one)", path)
		}
		return nil, fmt.Errorf("--dpop-key: %w", err)
	}
	return identity.LoadOrCreateDPoPKey(path)
}

// bearer sends a token with the Bearer scheme.
type bearer struct {
	base  http.RoundTripper
	token string
}

func (b *bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.base.RoundTrip(r)
}

// cmdHashPassword prints the argon2id hash of the password on stdin's first
// line, for identity.authorization_server.users[].password_hash.
func cmdHashPassword(args []string) error {
	fs := flag.NewFlagSet("sag hash-password", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: sag hash-password < FILE   (the password is the first line of stdin)")
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: the password is read from stdin, never from the command line", fs.Arg(0))
	}
	line, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	h, err := identity.HashPassword(strings.TrimRight(line, "\r\n"))
	if err != nil {
		return err
	}
	fmt.Println(h)
	return nil
}
