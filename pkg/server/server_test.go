package server

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
	"github.com/switchyard-proxy/switchyard/pkg/proxier"
)

type fakeState struct {
	healthy, deleting bool
	syncers           []*proxier.Syncer
	snap              *proxier.Snapshot
}

func (f *fakeState) Healthy() bool { return f.healthy }
func (f *fakeState) FamilyHealth() []proxier.FamilyHealth {
	return []proxier.FamilyHealth{
		{Family: v1.IPv4Protocol, LastSynced: lastSynced, Healthy: f.healthy},
		{Family: v1.IPv6Protocol}, // not synced yet
	}
}

var lastSynced = time.Unix(1700000000, 0).UTC()

func (f *fakeState) NodeEligible() bool              { return !f.deleting }
func (f *fakeState) Syncers() []*proxier.Syncer      { return f.syncers }
func (f *fakeState) LastSnapshot() *proxier.Snapshot { return f.snap }

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

// health reads a health answer as kube-proxy's JSON.
func health(t *testing.T, h http.Handler, path string) (int, map[string]any) {
	t.Helper()
	code, body := get(t, h, path)
	var parsed map[string]any
	if err := json.Unmarshal([]byte(body), &parsed); err != nil {
		t.Fatalf("%s body %q: %v", path, body, err)
	}
	return code, parsed
}

func TestHealthSemantics(t *testing.T) {
	st := &fakeState{healthy: true}
	h := HealthHandler(st)
	before := time.Now()
	code, body := health(t, h, "/healthz")
	if code != 200 || body["nodeEligible"] != true || body["healthy"] != true {
		t.Errorf("healthy: %d %v", code, body)
	}
	// 200: lastUpdated is now, as kube-proxy answers.
	if last, err := time.Parse(time.RFC3339Nano, body["lastUpdated"].(string)); err != nil || last.Before(before) {
		t.Errorf("healthy: lastUpdated %v (%v), want now", body["lastUpdated"], err)
	}
	// Per family, only those synced so far.
	status, _ := body["status"].(map[string]any)
	v4, _ := status["IPv4"].(map[string]any)
	if len(status) != 1 || v4["healthy"] != true || v4["lastUpdated"] != lastSynced.Format(time.RFC3339Nano) {
		t.Errorf("healthy: status %v", body["status"])
	}
	if _, ok := body["currentTime"].(string); !ok {
		t.Errorf("no currentTime: %v", body)
	}
	if _, body := health(t, h, "/livez"); body["nodeEligible"] != nil {
		t.Errorf("/livez says nodeEligible: %v", body)
	}

	// A requested sync has not completed in time: both fail, and
	// lastUpdated is the last sync.
	st.healthy = false
	for _, path := range []string{"/healthz", "/livez"} {
		code, body := health(t, h, path)
		v4, _ := body["status"].(map[string]any)["IPv4"].(map[string]any)
		if code != 503 || body["healthy"] != false || v4["healthy"] != false || body["lastUpdated"] != lastSynced.Format(time.RFC3339Nano) {
			t.Errorf("stale sync: %s %d %v", path, code, body)
		}
	}
	// The node is being deleted: not eligible, but alive.
	st.healthy, st.deleting = true, true
	if code, body := health(t, h, "/healthz"); code != 503 || body["nodeEligible"] != false || body["healthy"] != true {
		t.Errorf("deleting node: /healthz %d %v", code, body)
	}
	if code, _ := health(t, h, "/livez"); code != 200 {
		t.Errorf("deleting node: /livez %d, want 200", code)
	}
}

func TestMetricsAndDebug(t *testing.T) {
	ctx := context.Background()
	fake := iptables.NewFake()
	syncer := proxier.NewSyncer(proxier.RenderConfig{Family: v1.IPv4Protocol, MasqueradeBit: 14}, fake)
	snap := proxier.NewSnapshot()
	n := proxier.ServicePortName{Namespace: "shop", Name: "web", Port: "http", Protocol: v1.ProtocolTCP}
	snap.Services[n] = &proxier.ServicePort{Name: n, Port: 80, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}}
	snap.Endpoints[n] = []proxier.Endpoint{{Addr: netip.MustParseAddr("10.244.1.5"), Port: 8080, Ready: true, Serving: true}}
	other := proxier.ServicePortName{Namespace: "shop", Name: "web2", Port: "http", Protocol: v1.ProtocolTCP}
	snap.Services[other] = &proxier.ServicePort{Name: other, Port: 80, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.11")}}
	if _, err := syncer.Sync(ctx, snap); err != nil {
		t.Fatal(err)
	}
	fake.SetFailRestore(io.ErrUnexpectedEOF)
	snap2 := proxier.NewSnapshot()
	if _, err := syncer.Sync(ctx, snap2); err == nil {
		t.Fatal("expected a failed sync")
	}
	st := &fakeState{healthy: true, syncers: []*proxier.Syncer{syncer}, snap: snap}
	h := MetricsHandler(st, MetricsOptions{})

	code, body := get(t, h, "/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		`kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.001"}`,
		`kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"}`,
		`kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family="IPv4"} `,
		`kubeproxy_sync_proxy_rules_iptables_total{ip_family="IPv4",table="nat"}`,
		`switchyard_syncs_total{ip_family="IPv4",kind="full"}`,
		`switchyard_rules{ip_family="IPv4",level="endpoint",table="nat"} 2`,
		`kubeproxy_sync_proxy_rules_endpoint_changes_pending`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	if code, body := get(t, h, "/proxyMode"); code != 200 || body != "iptables" {
		t.Errorf("/proxyMode: %d %q", code, body)
	}

	code, body = get(t, h, "/debug/rules")
	var rules map[string]struct {
		Applied *proxier.Batch `json:"applied"`
		Failed  *proxier.Batch `json:"failed"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &rules) != nil {
		t.Fatalf("/debug/rules: %d %s", code, body)
	}
	r := rules["IPv4"]
	if r.Applied == nil || !strings.Contains(r.Applied.Text, "shop/web:http") || r.Failed == nil || r.Failed.Error == "" {
		t.Errorf("/debug/rules: %+v", r)
	}

	code, body = get(t, h, "/debug/services/shop/web")
	if code != 200 || !strings.Contains(body, "10.244.1.5") || !strings.Contains(body, proxier.ServiceChainName(n)) {
		t.Errorf("/debug/services/shop/web: %d %s", code, body)
	}
	if strings.Contains(body, "shop/web2") {
		t.Errorf("/debug/services/shop/web shows another Service's rules:\n%s", body)
	}
	if code, _ := get(t, h, "/debug/services/shop/nope"); code != 404 {
		t.Errorf("unknown service: %d", code)
	}
}

func TestConfigzAnswersTheGivenConfig(t *testing.T) {
	st := &fakeState{healthy: true}
	h := MetricsHandler(st, MetricsOptions{Configz: []byte(`{"kubeproxy.config.k8s.io":{"mode":"iptables"}}`)})
	code, body := get(t, h, "/configz")
	if code != http.StatusOK || body != `{"kubeproxy.config.k8s.io":{"mode":"iptables"}}` {
		t.Errorf("/configz: %d %s", code, body)
	}
	if code, _ := get(t, MetricsHandler(st, MetricsOptions{}), "/configz"); code != http.StatusNotFound {
		t.Errorf("/configz without a config: %d", code)
	}
}

// bindAddressHardFail=false: a port that cannot be bound does not stop the
// daemon; the server comes up once the port is free. true (Serve): an
// error, and the daemon exits.
func TestServeRetryingWaitsForThePort(t *testing.T) {
	defer func(d time.Duration) { retryListen = d }(retryListen)
	retryListen = 20 * time.Millisecond
	squatter, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := squatter.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	handler := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "mine") })
	if err := Serve(ctx, klog.Background(), "test", addr, handler); err == nil {
		t.Fatal("Serve on a busy port must fail (bindAddressHardFail=true exits)")
	}
	if err := ServeRetrying(ctx, klog.Background(), "test", addr, handler); err != nil {
		t.Fatalf("ServeRetrying must not fail: %v", err)
	}
	squatter.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) == "mine" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server never came up on %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
