// Package server owns switchyard's own HTTP endpoints: /healthz and /livez
// (kube-proxy's health port and answers), and on the metrics address
// /metrics (Prometheus), /debug/rules (the last applied and the last failed
// iptables-restore batch) and /debug/services/NS/NAME (one Service's model
// and rules). It reads state through small interfaces and changes nothing.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"

	"github.com/switchyard-proxy/switchyard/pkg/metrics"
	"github.com/switchyard-proxy/switchyard/pkg/proxier"
)

// State is what the endpoints read.
type State interface {
	// Healthy: every requested sync completed, or the oldest pending one
	// was requested less than twice the sync period ago.
	Healthy() bool
	// LastSync is when the last sync succeeded.
	LastSync() time.Time
	// NodeDeleting is true while our Node is being deleted.
	NodeDeleting() bool
	Syncers() []*proxier.Syncer
	LastSnapshot() *proxier.Snapshot
}

// HealthHandler serves /healthz and /livez.
func HealthHandler(st State) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		eligible := !st.NodeDeleting()
		answer(w, st, st.Healthy() && eligible, &eligible, metrics.HealthzTotal)
	})
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) {
		answer(w, st, st.Healthy(), nil, metrics.LivezTotal)
	})
	return mux
}

// answer writes kube-proxy's health answer: 200 or 503 with
// {"lastUpdated", "currentTime"[, "nodeEligible"]}.
func answer(w http.ResponseWriter, st State, ok bool, eligible *bool, total *prometheus.CounterVec) {
	code := http.StatusOK
	if !ok {
		code = http.StatusServiceUnavailable
	}
	total.WithLabelValues(strconv.Itoa(code)).Inc()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	last := ""
	if t := st.LastSync(); !t.IsZero() {
		last = t.UTC().Format(time.RFC3339Nano)
	}
	now := time.Now().UTC().Format(time.RFC3339Nano)
	if eligible != nil {
		fmt.Fprintf(w, `{"lastUpdated": %q,"currentTime": %q, "nodeEligible": %v}`, last, now, *eligible)
		return
	}
	fmt.Fprintf(w, `{"lastUpdated": %q,"currentTime": %q}`, last, now)
}

// MetricsHandler serves /metrics and the /debug endpoints; with profiling,
// also Go's /debug/pprof (kube-proxy's --profiling).
func MetricsHandler(st State, profiling bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(metrics.Registry, promhttp.HandlerOpts{}))
	// As on kube-proxy's metrics port: tools (upstream's Service e2e tests
	// among them) ask it which mode the proxy runs in.
	mux.HandleFunc("/proxyMode", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, "iptables")
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") })
	// Go profiles, as kube-proxy serves them on its metrics port: where a
	// node's CPU and memory go.
	if profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("/debug/rules", func(w http.ResponseWriter, _ *http.Request) {
		type family struct {
			Applied *proxier.Batch `json:"applied,omitempty"`
			Failed  *proxier.Batch `json:"failed,omitempty"`
		}
		out := map[string]family{}
		for _, s := range st.Syncers() {
			applied, failed := s.Batches()
			f := family{}
			if !applied.Time.IsZero() {
				f.Applied = &applied
			}
			if !failed.Time.IsZero() {
				f.Failed = &failed
			}
			out[string(s.Config.Family)] = f
		}
		writeJSON(w, out)
	})
	mux.HandleFunc("/debug/services/", func(w http.ResponseWriter, r *http.Request) {
		key := strings.Trim(strings.TrimPrefix(r.URL.Path, "/debug/services/"), "/")
		ns, name, ok := strings.Cut(key, "/")
		if !ok || ns == "" || name == "" {
			http.Error(w, "use /debug/services/NAMESPACE/NAME", http.StatusBadRequest)
			return
		}
		snap := st.LastSnapshot()
		if snap == nil {
			http.Error(w, "no sync has completed yet", http.StatusServiceUnavailable)
			return
		}
		view := proxier.DescribeService(snap, st.Syncers(), ns, name)
		if len(view.Ports) == 0 {
			http.Error(w, fmt.Sprintf("service %s/%s is not proxied by switchyard on this node", ns, name), http.StatusNotFound)
			return
		}
		writeJSON(w, view)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Serve runs handler on addr until ctx ends. An empty addr disables it.
// A failure to listen is returned at once; later errors are logged.
func Serve(ctx context.Context, logger klog.Logger, name, addr string, handler http.Handler) error {
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s server on %s: %w", name, addr, err)
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(c)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error(err, "Server stopped", "server", name, "address", addr)
		}
	}()
	logger.Info("Serving", "server", name, "address", ln.Addr().String())
	return nil
}
