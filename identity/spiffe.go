package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// maxAgentTokenBytes bounds the JWT-SVID header before it is parsed.
const maxAgentTokenBytes = 8 << 10

// SPIFFEOptions configure SPIFFE identities: where trust bundles come from
// (files or the Workload API) and the gateway's own X.509-SVID.
type SPIFFEOptions struct {
	// TrustDomain is the trust domain agents must belong to.
	TrustDomain string
	// BundleFile (PEM) and JWTBundleFile (JWKS) are static trust bundles.
	BundleFile, JWTBundleFile string
	// WorkloadAPI is a Workload API address (unix:///path); when set it
	// supplies the bundles and the gateway's SVID, kept fresh as they
	// rotate.
	WorkloadAPI string
	// CertFile and KeyFile are the gateway's X.509-SVID without a Workload
	// API.
	CertFile, KeyFile string
	// Audience is the audience agents' JWT-SVIDs must name: the gateway's
	// public URL.
	Audience string
}

// SPIFFE authenticates agents by their SPIFFE identities: an X.509-SVID
// presented over mTLS, or a JWT-SVID in AgentTokenHeader. It also holds the
// gateway's own SVID, for serving TLS and for mTLS-bound upstream tokens.
type SPIFFE struct {
	td       spiffeid.TrustDomain
	audience string
	x509     x509bundle.Source // nil: no mTLS agents
	jwt      jwtbundle.Source  // nil: no JWT-SVID agents
	svid     x509svid.Source   // nil: the gateway has no SVID
	closers  []io.Closer
}

// NewSPIFFE loads bundles and the gateway's SVID. With a Workload API it
// waits (bounded by ctx) for the first update.
func NewSPIFFE(ctx context.Context, o SPIFFEOptions) (*SPIFFE, error) {
	td, err := spiffeid.TrustDomainFromString(o.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("identity: spiffe trust domain: %w", err)
	}
	s := &SPIFFE{td: td, audience: o.Audience}
	if o.WorkloadAPI != "" {
		client := workloadapi.WithClientOptions(workloadapi.WithAddr(o.WorkloadAPI))
		src, err := workloadapi.NewX509Source(ctx, client)
		if err != nil {
			return nil, fmt.Errorf("identity: workload API %s: %w", o.WorkloadAPI, err)
		}
		s.closers = append(s.closers, src)
		bundles, err := workloadapi.NewBundleSource(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(o.WorkloadAPI)))
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("identity: workload API %s: %w", o.WorkloadAPI, err)
		}
		s.closers = append(s.closers, bundles)
		s.svid, s.x509, s.jwt = src, bundles, bundles
	}
	if o.BundleFile != "" {
		b, err := x509bundle.Load(td, o.BundleFile)
		if err != nil {
			return nil, fmt.Errorf("identity: spiffe bundle: %w", err)
		}
		s.x509 = b
	}
	if o.JWTBundleFile != "" {
		b, err := jwtbundle.Load(td, o.JWTBundleFile)
		if err != nil {
			return nil, fmt.Errorf("identity: spiffe JWT bundle: %w", err)
		}
		s.jwt = b
	}
	if o.CertFile != "" {
		svid, err := x509svid.Load(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("identity: gateway SVID: %w", err)
		}
		s.svid = svid
	}
	return s, nil
}

// Close stops the Workload API watchers.
func (s *SPIFFE) Close() error {
	var errs []error
	for _, c := range s.closers {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// ID returns the gateway's own SPIFFE ID, "" without an SVID.
func (s *SPIFFE) ID() string {
	if s.svid == nil {
		return ""
	}
	svid, err := s.svid.GetX509SVID()
	if err != nil {
		return ""
	}
	return svid.ID.String()
}

// CertThumbprint returns the x5t#S256 of the gateway's current SVID leaf: the
// cnf of mTLS-bound upstream tokens (RFC 8705 §3.1).
func (s *SPIFFE) CertThumbprint() (string, error) {
	if s.svid == nil {
		return "", errors.New("the gateway has no X.509-SVID")
	}
	svid, err := s.svid.GetX509SVID()
	if err != nil {
		return "", err
	}
	return certThumbprint(svid.Certificates[0].Raw), nil
}

// ServerTLS returns the TLS configuration that serves the gateway's SVID and
// asks clients for theirs: a client certificate is optional (agents may use
// DPoP alone), but one that is presented must be an X.509-SVID of the trust
// domain, verified against its bundle. Nil without an SVID.
func (s *SPIFFE) ServerTLS() *tls.Config {
	if s.svid == nil {
		return nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: tlsconfig.GetCertificate(s.svid)}
	if s.x509 != nil {
		verify := tlsconfig.VerifyPeerCertificate(s.x509, tlsconfig.AuthorizeMemberOf(s.td))
		cfg.ClientAuth = tls.RequestClientCert
		cfg.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return nil
			}
			return verify(raw, chains)
		}
	}
	return cfg
}

// ClientTLS returns the TLS configuration for upstreams that authenticate
// the gateway by its SVID: it presents the SVID and verifies the upstream's
// own SVID against the bundle. Nil without an SVID or a bundle.
func (s *SPIFFE) ClientTLS() *tls.Config {
	if s.svid == nil || s.x509 == nil {
		return nil
	}
	return tlsconfig.MTLSClientConfig(s.svid, s.x509, tlsconfig.AuthorizeMemberOf(s.td))
}

// Agent implements AgentAuthenticator: the SPIFFE ID of the client's
// X.509-SVID (verified during the TLS handshake by ServerTLS), or of a
// JWT-SVID in AgentTokenHeader (signature, expiry and audience checked
// against the trust bundle). When both are presented they must agree.
func (s *SPIFFE) Agent(_ context.Context, r *http.Request) (string, error) {
	var fromCert, fromJWT string
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		if s.x509 == nil {
			return "", agentErr("client certificates are not accepted")
		}
		// Verified again here, so that a certificate that reached the
		// request by another path is never trusted unchecked.
		id, _, err := x509svid.Verify(r.TLS.PeerCertificates, s.x509)
		if err != nil || id.TrustDomain() != s.td {
			return "", agentErr("client certificate is not an X.509-SVID of trust domain " + s.td.Name())
		}
		fromCert = id.String()
	}
	switch vals := r.Header.Values(AgentTokenHeader); len(vals) {
	case 0:
	case 1:
		id, err := s.VerifyJWTSVID(vals[0])
		if err != nil {
			return "", err
		}
		fromJWT = id
	default:
		return "", &OAuthError{Status: http.StatusBadRequest, Code: ErrCodeInvalidRequest, Description: "more than one " + AgentTokenHeader + " header"}
	}
	if fromCert != "" && fromJWT != "" && fromCert != fromJWT {
		return "", agentErr("client certificate and " + AgentTokenHeader + " name different agents")
	}
	if fromCert != "" {
		return fromCert, nil
	}
	return fromJWT, nil
}

// VerifyJWTSVID checks a JWT-SVID (typ JWT or JOSE, RS/ES/PS, kid required)
// against the JWT bundle, with the gateway as audience, and returns its
// SPIFFE ID.
func (s *SPIFFE) VerifyJWTSVID(token string) (string, error) {
	if s.jwt == nil {
		return "", agentErr("JWT-SVIDs are not accepted")
	}
	if len(token) > maxAgentTokenBytes {
		return "", agentErr("agent token too large")
	}
	svid, err := jwtsvid.ParseAndValidate(token, s.jwt, []string{s.audience})
	if err != nil {
		return "", agentErr("invalid JWT-SVID")
	}
	if svid.ID.TrustDomain() != s.td {
		return "", agentErr("JWT-SVID of another trust domain")
	}
	return svid.ID.String(), nil
}

// VerifyActor implements ActorVerifier for token exchange: the actor token
// is a JWT-SVID.
func (s *SPIFFE) VerifyActor(_ context.Context, token, tokenType string) (string, error) {
	if tokenType != jwtTokenType {
		return "", fmt.Errorf("actor_token_type must be %s (a JWT-SVID)", jwtTokenType)
	}
	return s.VerifyJWTSVID(token)
}

func agentErr(desc string) *OAuthError {
	return &OAuthError{Status: http.StatusUnauthorized, Code: ErrCodeInvalidToken, Description: desc}
}

// jwtTokenType is the RFC 8693 §3 token type of a JWT (a JWT-SVID).
const jwtTokenType = "urn:ietf:params:oauth:token-type:jwt"

var (
	_ ActorVerifier      = (*SPIFFE)(nil)
	_ AgentAuthenticator = (*SPIFFE)(nil)
)
