package server

import (
	"bufio"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sag-gateway/sag/pipeline"
	"github.com/sag-gateway/sag/upstreams"
)

// MetricsScope is the scope a scraper's access token needs for /metrics
// when authentication is on.
const MetricsScope = "sag:metrics"

// metrics are SAG's Prometheus series, on their own registry.
type metrics struct {
	reg         *prometheus.Registry
	requests    *prometheus.CounterVec
	reqLatency  *prometheus.HistogramVec
	calls       *prometheus.CounterVec
	callLatency *prometheus.HistogramVec
	sessions    prometheus.Gauge
	// authFailures counts requests refused by authentication.
	authFailures prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sag_http_requests_total", Help: "HTTP requests by route and status code.",
		}, []string{"route", "code"}),
		reqLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "sag_http_request_duration_seconds", Help: "HTTP request latency by route (streams count until they close).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, []string{"route"}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sag_tool_calls_total", Help: "Tool calls by upstream, tool and outcome (ok, tool_error, error, denied).",
		}, []string{"upstream", "tool", "outcome"}),
		callLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "sag_tool_call_duration_seconds", Help: "Tool call latency through the gateway, by upstream.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, []string{"upstream"}),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sag_mcp_sessions", Help: "Open session-based MCP sessions.",
		}),
		authFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sag_auth_failures_total", Help: "Requests refused by authentication (bad or missing token, proof or agent identity).",
		}),
	}
	m.reg.MustRegister(m.requests, m.reqLatency, m.calls, m.callLatency, m.sessions, m.authFailures,
		// go_gc_heap_live_bytes (the heap the last GC kept) shows a leak
		// without the sawtooth of the heap in use: sag bench --soak reads it.
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(
			collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/gc/heap/live:bytes$`)})),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// watch exports each upstream's health at scrape time.
func (m *metrics) watch(mgr *upstreams.Manager) {
	m.reg.MustRegister(&upstreamCollector{mgr: mgr})
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

func (m *metrics) toolCall(upstream, tool, decision string, isError bool, d time.Duration) {
	outcome := "ok"
	switch {
	case decision == pipeline.DecisionDeny:
		outcome = "denied"
	case decision == pipeline.DecisionError:
		outcome = "error"
	case isError:
		outcome = "tool_error"
	}
	m.calls.WithLabelValues(upstream, tool, outcome).Inc()
	if upstream != "" {
		m.callLatency.WithLabelValues(upstream).Observe(d.Seconds())
	}
}

// instrument counts and times requests to one route.
func (m *metrics) instrument(route string, h http.Handler) http.Handler {
	lat := m.reqLatency.WithLabelValues(route)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(sw, r)
		m.requests.WithLabelValues(route, strconv.Itoa(sw.code)).Inc()
		lat.Observe(time.Since(start).Seconds())
	})
}

// statusWriter records the status code; Flush and Unwrap keep streaming
// responses working through it.
type statusWriter struct {
	http.ResponseWriter
	code  int
	wrote bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.code, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	w.wrote = true
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Hijack hands the connection over (a WebSocket upgrade: 101).
func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.code, w.wrote = http.StatusSwitchingProtocols, true
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

type upstreamCollector struct{ mgr *upstreams.Manager }

var (
	upDesc       = prometheus.NewDesc("sag_upstream_up", "1 if the gateway's control session to the upstream is connected.", []string{"upstream"}, nil)
	upToolsDesc  = prometheus.NewDesc("sag_upstream_tools", "Tools the upstream offers.", []string{"upstream"}, nil)
	upSessDesc   = prometheus.NewDesc("sag_upstream_sessions", "Per-session upstream connections open.", []string{"upstream"}, nil)
	conflictDesc = prometheus.NewDesc("sag_catalog_conflicts", "Catalog entries left out because of collisions or invalid definitions.", nil, nil)
)

func (c *upstreamCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- upDesc
	ch <- upToolsDesc
	ch <- upSessDesc
	ch <- conflictDesc
}

func (c *upstreamCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.mgr.Statuses() {
		up := 0.0
		if s.Connected {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(upDesc, prometheus.GaugeValue, up, s.Name)
		ch <- prometheus.MustNewConstMetric(upToolsDesc, prometheus.GaugeValue, float64(s.Tools), s.Name)
		ch <- prometheus.MustNewConstMetric(upSessDesc, prometheus.GaugeValue, float64(s.Sessions), s.Name)
	}
	ch <- prometheus.MustNewConstMetric(conflictDesc, prometheus.GaugeValue, float64(len(c.mgr.Catalog().Conflicts)))
}
