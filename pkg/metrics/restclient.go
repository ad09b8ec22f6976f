package metrics

import (
	"context"
	"net/url"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientmetrics "k8s.io/client-go/tools/metrics"
)

// client-go's API client metrics, with the names, labels and buckets
// Kubernetes components (kube-proxy among them) publish.
var (
	restLatencyBuckets = []float64{0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0}
	restSizeBuckets    = []float64{64, 256, 512, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216}

	RESTRequestLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "rest_client_request_duration_seconds",
		Help: "Request latency in seconds. Broken down by verb, and host.", Buckets: restLatencyBuckets}, []string{"verb", "host"})
	RESTRequestSize = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "rest_client_request_size_bytes",
		Help: "Request size in bytes. Broken down by verb and host.", Buckets: restSizeBuckets}, []string{"verb", "host"})
	RESTResponseSize = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "rest_client_response_size_bytes",
		Help: "Response size in bytes. Broken down by verb and host.", Buckets: restSizeBuckets}, []string{"verb", "host"})
	RESTRateLimiterLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "rest_client_rate_limiter_duration_seconds",
		Help: "Client side rate limiter latency in seconds. Broken down by verb, and host.", Buckets: restLatencyBuckets}, []string{"verb", "host"})
	RESTRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rest_client_requests_total",
		Help: "Number of HTTP requests, partitioned by status code, method, and host."}, []string{"code", "method", "host"})
	RESTRetries = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rest_client_request_retries_total",
		Help: "Number of request retries, partitioned by status code, verb, and host."}, []string{"code", "verb", "host"})
	RESTTransportCacheEntries = prometheus.NewGauge(prometheus.GaugeOpts{Name: "rest_client_transport_cache_entries",
		Help: "Number of transports in the internal cache."})
	RESTTransportCreateCalls = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rest_client_transport_create_calls_total",
		Help: "Number of calls to get a new transport, partitioned by the result of the operation hit: obtained from the cache, miss: created and added to the cache, uncacheable: created and not cached"},
		[]string{"result"})

	// BuildInfo is kubernetes_build_info, as every Kubernetes component
	// publishes it; set by SetBuildInfo.
	BuildInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "kubernetes_build_info",
		Help: "A metric with a constant '1' value labeled by major, minor, git version, git commit, git tree state, build date, Go version, and compiler from which Kubernetes was built, and platform on which it is running."},
		[]string{"major", "minor", "git_version", "git_commit", "git_tree_state", "build_date", "go_version", "compiler", "platform"})
)

func init() {
	Registry.MustRegister(RESTRequestLatency, RESTRequestSize, RESTResponseSize, RESTRateLimiterLatency, RESTRequests, RESTRetries,
		RESTTransportCacheEntries, RESTTransportCreateCalls, BuildInfo)
	clientmetrics.Register(clientmetrics.RegisterOpts{
		RequestLatency:        latencyAdapter{RESTRequestLatency},
		RateLimiterLatency:    latencyAdapter{RESTRateLimiterLatency},
		RequestSize:           sizeAdapter{RESTRequestSize},
		ResponseSize:          sizeAdapter{RESTResponseSize},
		RequestResult:         resultAdapter{RESTRequests},
		RequestRetry:          retryAdapter{RESTRetries},
		TransportCacheEntries: cacheAdapter{},
		TransportCreateCalls:  createAdapter{},
	})
}

// SetBuildInfo publishes the version switchyard was built as; the Kubernetes
// version fields name the kube-proxy release it matches.
func SetBuildInfo(gitVersion, gitCommit string) {
	BuildInfo.Reset()
	BuildInfo.WithLabelValues("1", "36", gitVersion, gitCommit, "clean", "", runtime.Version(), runtime.Compiler, runtime.GOOS+"/"+runtime.GOARCH).Set(1)
}

type latencyAdapter struct{ h *prometheus.HistogramVec }

func (a latencyAdapter) Observe(_ context.Context, verb string, u url.URL, latency time.Duration) {
	a.h.WithLabelValues(verb, u.Host).Observe(latency.Seconds())
}

type sizeAdapter struct{ h *prometheus.HistogramVec }

func (a sizeAdapter) Observe(_ context.Context, verb, host string, size float64) {
	a.h.WithLabelValues(verb, host).Observe(size)
}

type resultAdapter struct{ c *prometheus.CounterVec }

func (a resultAdapter) Increment(_ context.Context, code, method, host string) {
	a.c.WithLabelValues(code, method, host).Inc()
}

type retryAdapter struct{ c *prometheus.CounterVec }

func (a retryAdapter) IncrementRetry(_ context.Context, code, method, host string) {
	a.c.WithLabelValues(code, method, host).Inc()
}

type cacheAdapter struct{}

func (cacheAdapter) Observe(value int) { RESTTransportCacheEntries.Set(float64(value)) }

type createAdapter struct{}

func (createAdapter) Increment(result string) { RESTTransportCreateCalls.WithLabelValues(result).Inc() }
