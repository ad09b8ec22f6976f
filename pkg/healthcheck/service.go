// Package healthcheck owns switchyard's HTTP servers for the health check
// node ports of LoadBalancer Services with externalTrafficPolicy Local. A
// load balancer probes them to learn which nodes have local endpoints. The
// answers match kube-proxy's: 200 when the node has local ready endpoints
// and the proxy is healthy, 503 otherwise, with the same JSON body and
// X-Load-Balancing-Endpoint-Weight header.
//
// It opens sockets but knows nothing of iptables; the daemon feeds it the
// ports and endpoint counts computed by pkg/proxier after every sync.
package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// Services serves one health check port per Service.
type Services struct {
	logger  klog.Logger
	addrs   func() []string // listen addresses (see NewServices)
	healthy func() bool
	onError func(service string, port int32, err error)

	mu        sync.Mutex
	instances map[string]*instance // by namespace/name
	// failed remembers ports that could not be opened, to report once.
	failed map[string]int32
}

type instance struct {
	port      int32
	endpoints int
	servers   []*http.Server
}

// NewServices returns an empty set of servers. healthy reports the proxy's
// own health; onError is told about ports that cannot be opened.
//
// listenAddrs is asked for the addresses each time a server opens: nil
// means every address; an empty, non-nil list means none is known yet (the
// node's primary IP before its Node is seen), and the server is retried on
// a later sync.
func NewServices(logger klog.Logger, listenAddrs func() []string, healthy func() bool, onError func(service string, port int32, err error)) *Services {
	if onError == nil {
		onError = func(string, int32, error) {}
	}
	return &Services{logger: logger, addrs: listenAddrs, healthy: healthy, onError: onError,
		instances: map[string]*instance{}, failed: map[string]int32{}}
}

// Sync makes the open servers match ports (namespace/name -> port) and
// records each Service's local ready endpoint count. A port that cannot be
// opened is reported once and retried on later syncs; it never stops the
// others.
func (s *Services) Sync(ports map[string]int32, endpoints map[string]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, inst := range s.instances {
		if p, ok := ports[name]; !ok || p != inst.port {
			s.logger.Info("Closing health check node port", "service", name, "port", inst.port)
			inst.close()
			delete(s.instances, name)
		}
	}
	for name, port := range ports {
		if inst, ok := s.instances[name]; ok {
			inst.endpoints = endpoints[name]
			continue
		}
		inst := &instance{port: port, endpoints: endpoints[name]}
		if err := s.open(name, inst); err != nil {
			if s.failed[name] != port {
				s.failed[name] = port
				s.logger.Error(err, "Cannot open health check node port; will retry", "service", name, "port", port)
				s.onError(name, port, err)
			}
			continue
		}
		delete(s.failed, name)
		s.logger.Info("Opened health check node port", "service", name, "port", port)
		s.instances[name] = inst
	}
	for name := range s.failed {
		if _, ok := ports[name]; !ok {
			delete(s.failed, name)
		}
	}
}

func (s *Services) open(name string, inst *instance) error {
	var addrs []string
	if s.addrs != nil {
		addrs = s.addrs()
	}
	switch {
	case addrs == nil:
		addrs = []string{""}
	case len(addrs) == 0:
		return fmt.Errorf("no address allowed by --nodeport-addresses is known (yet: the primary IP comes from the Node object)")
	}
	var listeners []net.Listener
	for _, a := range addrs {
		ln, err := net.Listen("tcp", net.JoinHostPort(a, strconv.Itoa(int(inst.port))))
		if err != nil {
			for _, l := range listeners {
				l.Close()
			}
			return err
		}
		listeners = append(listeners, ln)
	}
	ns, svc, _ := strings.Cut(name, "/")
	for _, ln := range listeners {
		srv := &http.Server{Handler: handler{s: s, name: name, namespace: ns, service: svc}, ReadHeaderTimeout: 5 * time.Second}
		inst.servers = append(inst.servers, srv)
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.logger.Error(err, "Health check server stopped", "service", name)
			}
		}()
	}
	return nil
}

func (inst *instance) close() {
	for _, srv := range inst.servers {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = srv.Shutdown(ctx)
		cancel()
	}
}

// Close stops every server.
func (s *Services) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, inst := range s.instances {
		inst.close()
		delete(s.instances, name)
	}
}

// Ports returns the open ports, for tests and logs.
func (s *Services) Ports() map[string]int32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int32{}
	for name, inst := range s.instances {
		out[name] = inst.port
	}
	return out
}

// Response is the JSON body of a health check answer, for clients.
type Response struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

type handler struct {
	s                  *Services
	name               string
	namespace, service string
}

func (h handler) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	h.s.mu.Lock()
	inst, ok := h.s.instances[h.name]
	count := 0
	if ok {
		count = inst.endpoints
	}
	h.s.mu.Unlock()
	healthy := h.s.healthy == nil || h.s.healthy()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(count))
	if count > 0 && healthy {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprintf(w, "{\n\t\"service\": {\n\t\t\"namespace\": %q,\n\t\t\"name\": %q\n\t},\n\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": %v\n}",
		h.namespace, h.service, count, healthy)
}
