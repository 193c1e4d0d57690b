// Command svidprobe is a tiny SPIFFE workload used by e2e/spire/selftest.sh. It connects to the SPIFFE Workload API,
// fetches its X.509-SVID and a JWT-SVID for the audience given on the command line,
// verifies both (the X.509-SVID against the trust bundle file when -bundle is set, the
// JWT-SVID against the Workload API's JWT bundles) and prints its SPIFFE ID on stdout.
// Details go to stderr.
//
//	svidprobe [-socket unix:///path/agent.sock] [-bundle bundle.pem] [-timeout 30s] AUDIENCE
//
// The socket defaults to $SPIRE_SOCKET, then $SPIFFE_ENDPOINT_SOCKET; -bundle defaults to
// $SPIRE_BUNDLE and the trust domain to $SPIRE_TRUST_DOMAIN (else the SVID's own).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "svidprobe:", err)
		os.Exit(1)
	}
}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

func run() error {
	socket := flag.String("socket", firstNonEmpty(os.Getenv("SPIRE_SOCKET"), os.Getenv("SPIFFE_ENDPOINT_SOCKET")),
		"Workload API address (unix:///abs/path)")
	bundlePath := flag.String("bundle", os.Getenv("SPIRE_BUNDLE"), "trust bundle PEM to verify the X.509-SVID against (optional)")
	tdName := flag.String("trust-domain", os.Getenv("SPIRE_TRUST_DOMAIN"), "trust domain of -bundle (default: the SVID's)")
	timeout := flag.Duration("timeout", 30*time.Second, "overall timeout")
	flag.Parse()
	if flag.NArg() != 1 {
		return errors.New("usage: svidprobe [flags] AUDIENCE")
	}
	audience := flag.Arg(0)
	if *socket == "" {
		return errors.New("no Workload API address: set -socket, SPIRE_SOCKET or SPIFFE_ENDPOINT_SOCKET")
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	clientOpts := workloadapi.WithClientOptions(workloadapi.WithAddr(*socket))

	// NewX509Source blocks until the first X.509 context arrives; the go-spiffe watcher
	// retries while the agent still answers "no identity issued".
	src, err := workloadapi.NewX509Source(ctx, clientOpts)
	if err != nil {
		return fmt.Errorf("X.509 source: %w", err)
	}
	defer src.Close()
	svid, err := src.GetX509SVID()
	if err != nil {
		return fmt.Errorf("X.509-SVID: %w", err)
	}
	id := svid.ID
	fmt.Fprintf(os.Stderr, "x509-svid: %s (expires %s)\n", id, svid.Certificates[0].NotAfter.UTC().Format(time.RFC3339))

	if *bundlePath != "" {
		td := id.TrustDomain()
		if *tdName != "" {
			if td, err = spiffeid.TrustDomainFromString(*tdName); err != nil {
				return fmt.Errorf("trust domain: %w", err)
			}
		}
		bundle, err := x509bundle.Load(td, *bundlePath)
		if err != nil {
			return fmt.Errorf("load bundle: %w", err)
		}
		vid, _, err := x509svid.Verify(svid.Certificates, bundle)
		if err != nil {
			return fmt.Errorf("X.509-SVID does not verify against %s: %w", *bundlePath, err)
		}
		fmt.Fprintf(os.Stderr, "x509-svid verified against %s: %s\n", *bundlePath, vid)
	}

	jwt, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience}, workloadapi.WithAddr(*socket))
	if err != nil {
		return fmt.Errorf("JWT-SVID: %w", err)
	}
	jwtBundles, err := workloadapi.FetchJWTBundles(ctx, workloadapi.WithAddr(*socket))
	if err != nil {
		return fmt.Errorf("JWT bundles: %w", err)
	}
	parsed, err := jwtsvid.ParseAndValidate(jwt.Marshal(), jwtBundles, []string{audience})
	if err != nil {
		return fmt.Errorf("JWT-SVID does not validate: %w", err)
	}
	if parsed.ID != id {
		return fmt.Errorf("JWT-SVID is for %s, X.509-SVID for %s", parsed.ID, id)
	}
	fmt.Fprintf(os.Stderr, "jwt-svid: %s aud=%v (expires %s)\n", parsed.ID, parsed.Audience, parsed.Expiry.UTC().Format(time.RFC3339))

	fmt.Println(id.String())
	return nil
}
