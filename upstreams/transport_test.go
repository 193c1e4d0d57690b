package upstreams

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestTransportReusesConnections guards the upstream transport's idle pool:
// concurrent requests to one upstream (one per downstream session) must
// reuse keep-alive connections, not dial one per request, as net/http's
// default of 2 idle connections per host would.
func TestTransportReusesConnections(t *testing.T) {
	var dials atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok")
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			dials.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()

	const workers, requests = 8, 20
	client := &http.Client{Transport: newTransport(16)}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range requests {
				resp, err := client.Get(srv.URL)
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				// Between two calls of a session the gateway does other
				// work: meanwhile most connections are idle at once.
				time.Sleep(time.Millisecond)
			}
		})
	}
	wg.Wait()
	// A connection goes back to the pool a moment after its response is
	// read, so a request can race it and dial once more: allow twice the
	// workers. Keeping only 2 idle connections per host opens about 100.
	if n := dials.Load(); n > 2*workers {
		t.Errorf("%d requests from %d workers opened %d connections, want at most %d", workers*requests, workers, n, 2*workers)
	}
}
