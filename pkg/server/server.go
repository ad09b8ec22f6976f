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
	// NodeEligible is false while our Node is unknown, deleted, being
	// deleted or tainted for deletion: /healthz then fails.
	NodeEligible() bool
	// FamilyHealth is each IP family's last sync and health.
	FamilyHealth() []proxier.FamilyHealth
	Syncers() []*proxier.Syncer
	LastSnapshot() *proxier.Snapshot
}

// HealthHandler serves /healthz and /livez.
func HealthHandler(st State) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		eligible := st.NodeEligible()
		answer(w, st, &eligible, metrics.HealthzTotal)
	})
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) {
		answer(w, st, nil, metrics.LivezTotal)
	})
	return mux
}

// healthAnswer is the body of kube-proxy's health answers, field for field.
type healthAnswer struct {
	// LastUpdated is now when the answer is 200 (as kube-proxy has always
	// said), otherwise the last time any family synced.
	LastUpdated time.Time `json:"lastUpdated"`
	CurrentTime time.Time `json:"currentTime"`
	// NodeEligible is only in /healthz: the Node is not being deleted nor
	// tainted for deletion.
	NodeEligible *bool `json:"nodeEligible,omitempty"`
	// Healthy is the sync loop's health, node eligibility aside.
	Healthy bool                    `json:"healthy"`
	Status  map[string]familyAnswer `json:"status,omitempty"`
}

type familyAnswer struct {
	LastUpdated time.Time `json:"lastUpdated"`
	Healthy     bool      `json:"healthy"`
}

// answer writes kube-proxy's health answer: 200, or 503 when a requested
// sync is overdue (or, for /healthz, the node is not eligible), with
// healthAnswer as JSON.
func answer(w http.ResponseWriter, st State, eligible *bool, total *prometheus.CounterVec) {
	now := time.Now()
	a := healthAnswer{CurrentTime: now, NodeEligible: eligible, Healthy: st.Healthy()}
	for _, f := range st.FamilyHealth() {
		if f.LastSynced.IsZero() {
			continue // not synced yet: listed once it has
		}
		if a.Status == nil {
			a.Status = map[string]familyAnswer{}
		}
		a.Status[string(f.Family)] = familyAnswer{LastUpdated: f.LastSynced, Healthy: f.Healthy}
		if f.LastSynced.After(a.LastUpdated) {
			a.LastUpdated = f.LastSynced
		}
	}
	ok := a.Healthy && (eligible == nil || *eligible)
	code := http.StatusOK
	if ok {
		a.LastUpdated = now
	} else {
		code = http.StatusServiceUnavailable
	}
	total.WithLabelValues(strconv.Itoa(code)).Inc()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	body, _ := json.Marshal(a)
	_, _ = w.Write(body)
}

// MetricsOptions shape the metrics address.
type MetricsOptions struct {
	// Profiling serves Go's /debug/pprof (kube-proxy's --profiling).
	Profiling bool
	// Configz is the JSON /configz answers, as kube-proxy's:
	// {"kubeproxy.config.k8s.io": CONFIG}. Empty leaves /configz out.
	Configz []byte
}

// MetricsHandler serves /metrics, /configz and the /debug endpoints.
func MetricsHandler(st State, o MetricsOptions) http.Handler {
	profiling := o.Profiling
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(metrics.Registry, promhttp.HandlerOpts{}))
	// As on kube-proxy's metrics port: tools (upstream's Service e2e tests
	// among them) ask it which mode the proxy runs in.
	mux.HandleFunc("/proxyMode", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, "iptables")
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") })
	if len(o.Configz) > 0 {
		mux.HandleFunc("/configz", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(o.Configz)
		})
	}
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

// ServeRetrying is Serve for kube-proxy's bindAddressHardFail=false (its
// default): an address that cannot be listened on is logged and retried
// every 5 seconds until ctx ends, while everything else goes on. It never
// returns an error.
func ServeRetrying(ctx context.Context, logger klog.Logger, name, addr string, handler http.Handler) error {
	if err := Serve(ctx, logger, name, addr, handler); err == nil {
		return nil
	} else {
		logger.Error(err, "Cannot listen; proxying goes on and the server is retried every 5s (pass --bind-address-hard-fail to exit instead)", "server", name)
	}
	go func() {
		t := time.NewTicker(retryListen)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if err := Serve(ctx, logger, name, addr, handler); err == nil {
				return
			}
		}
	}()
	return nil
}

// retryListen is how often ServeRetrying tries again, as kube-proxy does.
var retryListen = 5 * time.Second

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
