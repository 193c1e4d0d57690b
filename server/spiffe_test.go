package server_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sag-gateway/sag/fixtures"
	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"
)

const trustDomain = "sag.test"

// testCA is a SPIFFE trust domain for tests: an X.509 CA issuing SVIDs and
// a JWT authority signing JWT-SVIDs, without SPIRE.
type testCA struct {
	dir     string
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	jwtKey  jwk.Key
	bundle  string // PEM file
	jwtFile string // JWKS file
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs: []*url.URL{{Scheme: "spiffe", Host: trustDomain}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{dir: t.TempDir(), cert: cert, key: key}
	ca.bundle = filepath.Join(ca.dir, "bundle.pem")
	writePEM(t, ca.bundle, "CERTIFICATE", der)

	raw, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca.jwtKey, _ = jwk.Import(raw)
	ca.jwtKey.Set(jwk.KeyIDKey, "jwt-authority-1")
	pub, _ := ca.jwtKey.PublicKey()
	pub.Set(jwk.KeyUsageKey, "jwt-svid")
	set := jwk.NewSet()
	set.AddKey(pub)
	b, _ := json.Marshal(set)
	ca.jwtFile = filepath.Join(ca.dir, "jwt-bundle.json")
	if err := os.WriteFile(ca.jwtFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return ca
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// svid issues an X.509-SVID for id and returns it as a tls.Certificate and
// as PEM files.
func (ca *testCA) svid(t *testing.T, id string) (tls.Certificate, string, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(id)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	name := strings.ReplaceAll(u.Path, "/", "_")
	certFile, keyFile := filepath.Join(ca.dir, name+".pem"), filepath.Join(ca.dir, name+"-key.pem")
	writePEM(t, certFile, "CERTIFICATE", der)
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	writePEM(t, keyFile, "PRIVATE KEY", kder)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: crypto.Signer(key)}, certFile, keyFile
}

// jwtSVID signs a JWT-SVID for id with the given audience.
func (ca *testCA) jwtSVID(t *testing.T, id, aud string) string {
	t.Helper()
	claims, _ := json.Marshal(map[string]any{"sub": id, "aud": []string{aud}, "exp": time.Now().Add(5 * time.Minute).Unix(), "iat": time.Now().Unix()})
	hdr := jws.NewHeaders()
	hdr.Set(jws.KeyIDKey, "jwt-authority-1")
	hdr.Set(jws.TypeKey, "JWT")
	tok, err := jws.Sign(claims, jws.WithKey(jwa.ES256(), ca.jwtKey, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		t.Fatal(err)
	}
	return string(tok)
}

// startSPIFFEGateway serves a DPoP gateway over TLS with its own X.509-SVID,
// accepting agents' X.509-SVIDs and JWT-SVIDs of the trust domain.
func startSPIFFEGateway(t *testing.T, ca *testCA) *testGateway {
	t.Helper()
	_, certFile, keyFile := ca.svid(t, "spiffe://"+trustDomain+"/gateway")
	tg := startSecureGateway(t, config.AuthDPoP, func(c *config.Config) {
		c.Identity.SPIFFE = config.SPIFFE{TrustDomain: trustDomain, BundleFile: ca.bundle, JWTBundleFile: ca.jwtFile, CertFile: certFile, KeyFile: keyFile}
	})
	tg.HTTP = &http.Client{Transport: &http.Transport{TLSClientConfig: gatewayTLS(t, ca)}}
	return tg
}

// gatewayTLS trusts the gateway's X.509-SVID (by its SPIFFE ID, not a host
// name).
func gatewayTLS(t *testing.T, ca *testCA) *tls.Config {
	t.Helper()
	bundle, err := x509bundle.Load(spiffeid.RequireTrustDomainFromString(trustDomain), ca.bundle)
	if err != nil {
		t.Fatal(err)
	}
	return tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(spiffeid.RequireFromString("spiffe://"+trustDomain+"/gateway")))
}

// spiffeClient is an agent's HTTP client: it verifies the gateway's SVID,
// presents its own when cert is set, and sends DPoP with a token.
func spiffeClient(t *testing.T, ca *testCA, cert *tls.Certificate, a *agent, extra http.Header) *http.Client {
	t.Helper()
	tc := gatewayTLS(t, ca)
	if cert != nil {
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	base := &headerTransport{base: &http.Transport{TLSClientConfig: tc}, h: extra}
	return &http.Client{Transport: &identity.DPoPTransport{Base: base, Key: a.key, Token: func(context.Context) (string, error) { return a.token, nil }}}
}

type headerTransport struct {
	base http.RoundTripper
	h    http.Header
}

func (t *headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, v := range t.h {
		r.Header[k] = v
	}
	return t.base.RoundTrip(r)
}

// TestSPIFFEAgents: an agent authenticates with its X.509-SVID over mTLS or
// with a JWT-SVID; a token naming an actor is accepted only from that agent;
// the audit records the agent.
func TestSPIFFEAgents(t *testing.T) {
	ca := newTestCA(t)
	tg := startSPIFFEGateway(t, ca)
	if !strings.HasPrefix(tg.Base, "https://") {
		t.Fatalf("gateway URL %s: want https with an SVID", tg.Base)
	}
	agentID := "spiffe://" + trustDomain + "/agent/worker"
	agentCert, _, _ := ca.svid(t, agentID)
	otherCert, _, _ := ca.svid(t, "spiffe://"+trustDomain+"/agent/other")
	delegated := newAgent(t, tg, identity.Claims{Subject: "alice", Act: &identity.Actor{Sub: agentID}})
	plain := newAgent(t, tg, identity.Claims{Subject: "bob"})

	for _, tc := range []struct {
		name   string
		client *http.Client
		want   int
	}{
		{"mTLS agent named by the token", spiffeClient(t, ca, &agentCert, delegated, nil), http.StatusOK},
		{"JWT-SVID agent named by the token", spiffeClient(t, ca, nil, delegated, http.Header{identity.AgentTokenHeader: {ca.jwtSVID(t, agentID, tg.Base)}}), http.StatusOK},
		{"token names an actor, no agent credential", spiffeClient(t, ca, nil, delegated, nil), http.StatusUnauthorized},
		{"token names another agent (mTLS)", spiffeClient(t, ca, &otherCert, delegated, nil), http.StatusUnauthorized},
		{"JWT-SVID for another audience", spiffeClient(t, ca, nil, delegated, http.Header{identity.AgentTokenHeader: {ca.jwtSVID(t, agentID, "https://elsewhere")}}), http.StatusUnauthorized},
		{"mTLS and JWT-SVID disagree", spiffeClient(t, ca, &agentCert, delegated, http.Header{identity.AgentTokenHeader: {ca.jwtSVID(t, "spiffe://"+trustDomain+"/agent/other", tg.Base)}}), http.StatusUnauthorized},
		{"no actor in the token, agent known", spiffeClient(t, ca, &otherCert, plain, nil), http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, tg.MCP, strings.NewReader(initBody))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Accept", "application/json, text/event-stream")
			resp, err := tc.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d (%v)", resp.StatusCode, tc.want, resp.Header.Values("WWW-Authenticate"))
			}
		})
	}

	// A full MCP session over mTLS: the audit names the agent and the
	// upstream's token names it as the prior actor.
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c := mcp.NewClient(&mcp.Implementation{Name: "svid-agent", Version: "1"}, nil)
	cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: tg.MCP, HTTPClient: spiffeClient(t, ca, &agentCert, delegated, nil)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	res := callTool(t, cs, "fx__whoami", nil)
	if res.IsError {
		t.Fatalf("whoami: %+v", res)
	}
	recs := auditRecords(t, tg, "fx__whoami")
	if len(recs) == 0 || recs[len(recs)-1].SpiffeID != agentID || !strings.Contains(recs[len(recs)-1].Act, agentID) {
		t.Errorf("audit does not name the agent: %+v", recs)
	}
	if recs[len(recs)-1].MTLSThumbprint == "" {
		t.Error("audit lacks the client certificate thumbprint")
	}

	// Killing the agent ends its sessions; the same user through another
	// agent is untouched.
	code, body := tg.adminDo(t, http.MethodPost, "/admin/kill", server.KillRequest{Agent: agentID})
	if code != http.StatusOK {
		t.Fatalf("kill agent: %d %s", code, body)
	}
	if _, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "fx__whoami"}); err == nil {
		t.Error("the killed agent's session still answers")
	}
	initialize := func(c *http.Client) int {
		req, _ := http.NewRequest(http.MethodPost, tg.MCP, strings.NewReader(initBody))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := initialize(spiffeClient(t, ca, &agentCert, delegated, nil)); code != http.StatusForbidden {
		t.Errorf("a new session of the killed agent: %d, want 403", code)
	}
	other := newAgent(t, tg, identity.Claims{Subject: "alice"})
	if code := initialize(spiffeClient(t, ca, &otherCert, other, nil)); code != http.StatusOK {
		t.Errorf("another agent of the same user after the kill: %d, want 200", code)
	}
}

// TestTokenExchange: an agent exchanges the user's token, proving its
// identity with a JWT-SVID, for a DPoP-bound token that names it as the
// actor, then uses that token over mTLS.
func TestTokenExchange(t *testing.T) {
	ca := newTestCA(t)
	tg := startSPIFFEGateway(t, ca)
	agentID := "spiffe://" + trustDomain + "/agent/worker"
	agentCert, _, _ := ca.svid(t, agentID)
	userToken := mint(t, tg, identity.Claims{Subject: "alice", Scope: "mcp files"})
	key, err := identity.NewDPoPKey()
	if err != nil {
		t.Fatal(err)
	}
	exchange := func(form url.Values) (int, map[string]any) {
		proof, _ := key.Proof("POST", tg.Base+"/oauth/token", "", "")
		req, _ := http.NewRequest(http.MethodPost, tg.Base+"/oauth/token", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("DPoP", proof)
		resp, err := tg.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	form := url.Values{
		"grant_type":         {"urn:ietf:params:oauth:grant-type:token-exchange"},
		"subject_token":      {userToken},
		"subject_token_type": {"urn:ietf:params:oauth:token-type:access_token"},
		"actor_token":        {ca.jwtSVID(t, agentID, tg.Base)},
		"actor_token_type":   {"urn:ietf:params:oauth:token-type:jwt"},
		"scope":              {"mcp"},
	}
	code, out := exchange(form)
	if code != http.StatusOK || out["token_type"] != "DPoP" || out["scope"] != "mcp" {
		t.Fatalf("exchange: %d %v", code, out)
	}
	a := &agent{key: key, token: out["access_token"].(string)}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c := mcp.NewClient(&mcp.Implementation{Name: "exchanged", Version: "1"}, nil)
	cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: tg.MCP, HTTPClient: spiffeClient(t, ca, &agentCert, a, nil)}, nil)
	if err != nil {
		t.Fatalf("connect with the exchanged token: %v", err)
	}
	defer cs.Close()
	if res := callTool(t, cs, "fx__whoami", nil); res.IsError {
		t.Fatalf("whoami: %+v", res)
	}
	// The same token from another agent is refused.
	other, _, _ := ca.svid(t, "spiffe://"+trustDomain+"/agent/other")
	req, _ := http.NewRequest(http.MethodPost, tg.MCP, strings.NewReader(initBody))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if resp, err := spiffeClient(t, ca, &other, a, nil).Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("exchanged token from another agent: %v %v", resp.StatusCode, err)
	}
	// Refusals with the RFC's codes.
	for _, tc := range []struct {
		name, param, value, code string
	}{
		{"audience not allowed", "audience", "https://elsewhere.example", "invalid_target"},
		{"scope escalation", "scope", "admin", "invalid_scope"},
		{"no actor", "actor_token", "", "invalid_request"},
	} {
		f := url.Values{}
		for k, v := range form {
			f[k] = v
		}
		if tc.value == "" {
			delete(f, tc.param)
			delete(f, "actor_token_type")
		} else {
			f.Set(tc.param, tc.value)
		}
		if code, out := exchange(f); code != http.StatusBadRequest || out["error"] != tc.code {
			t.Errorf("%s: %d %v, want 400 %s", tc.name, code, out, tc.code)
		}
	}
	resp, err := tg.HTTP.Get(tg.Base + "/.well-known/oauth-authorization-server")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var meta map[string]any
	json.NewDecoder(resp.Body).Decode(&meta)
	if meta["token_endpoint"] != tg.Base+"/oauth/token" || meta["issuer"] != tg.Base {
		t.Errorf("RFC 8414 metadata: %v", meta)
	}
	resp, err = tg.HTTP.Get(tg.Base + "/.well-known/oauth-protected-resource")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var prm struct {
		Servers []string `json:"authorization_servers"`
	}
	json.NewDecoder(resp.Body).Decode(&prm)
	if len(prm.Servers) != 1 || prm.Servers[0] != tg.Base {
		t.Errorf("RFC 9728 authorization_servers %v, want the gateway", prm.Servers)
	}
}

// TestMTLSUpstream: an upstream with auth: mtls receives tokens bound to the
// gateway's X.509-SVID (cnf x5t#S256), which the gateway presents as its
// client certificate; the upstream checks both.
func TestMTLSUpstream(t *testing.T) {
	ca := newTestCA(t)
	tg := startSPIFFEGateway(t, ca)
	gatewayID := "spiffe://" + trustDomain + "/gateway"
	_, certFile, keyFile := ca.svid(t, "spiffe://"+trustDomain+"/fixture")
	svid, err := x509svid.Load(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := x509bundle.Load(spiffeid.RequireTrustDomainFromString(trustDomain), ca.bundle)
	if err != nil {
		t.Fatal(err)
	}
	f := fixtures.NewServer(fixtures.Options{
		Name: "secure",
		TLS:  tlsconfig.MTLSServerConfig(svid, bundle, tlsconfig.AuthorizeID(spiffeid.RequireFromString(gatewayID))),
		Verify: &fixtures.Verify{
			JWKSURL: tg.Base + "/.well-known/jwks.json", Issuer: tg.Base, Actor: gatewayID,
			Client: &http.Client{Transport: &http.Transport{TLSClientConfig: gatewayTLS(t, ca)}},
		},
	})
	up, stop, err := f.StartHTTP(false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	tg.addUpstream(t, server.UpstreamRequest{Name: "secure", URL: up, Auth: "mtls"})

	agentID := "spiffe://" + trustDomain + "/agent/worker"
	agentCert, _, _ := ca.svid(t, agentID)
	a := newAgent(t, tg, identity.Claims{Subject: "alice", Act: &identity.Actor{Sub: agentID}})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil)
	cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: tg.MCP, HTTPClient: spiffeClient(t, ca, &agentCert, a, nil)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if res := callTool(t, cs, "secure__whoami", nil); res.IsError {
		t.Fatalf("whoami over mTLS: %+v", res.Content)
	}
	v := f.Verified()
	if n := v.Refused.Load(); n != 0 {
		t.Fatalf("the upstream refused %d requests: %v", n, v.Reasons())
	}
	gwCert, _ := tls.LoadX509KeyPair(filepath.Join(ca.dir, "_gateway.pem"), filepath.Join(ca.dir, "_gateway-key.pem"))
	x5t := identity.CertThumbprint(gwCert.Certificate[0])
	var alice int
	for _, cl := range v.Claims() {
		if cl.Cnf == nil || cl.Cnf.X5T != x5t || cl.Cnf.JKT != "" {
			t.Errorf("token not bound to the gateway's certificate: %+v", cl.Cnf)
		}
		if cl.Subject == "alice" {
			alice++
			if cl.Act == nil || cl.Act.Sub != gatewayID || cl.Act.Act == nil || cl.Act.Act.Sub != agentID {
				t.Errorf("actor chain %s, want the gateway acting after the agent", cl.Act)
			}
		}
	}
	if alice == 0 {
		t.Error("no request carried alice's token")
	}
}
