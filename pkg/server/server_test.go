package server

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
	"github.com/switchyard-proxy/switchyard/pkg/proxier"
)

type fakeState struct {
	healthy, deleting bool
	syncers           []*proxier.Syncer
	snap              *proxier.Snapshot
}

func (f *fakeState) Healthy() bool                   { return f.healthy }
func (f *fakeState) LastSync() time.Time             { return time.Unix(1700000000, 0) }
func (f *fakeState) NodeDeleting() bool              { return f.deleting }
func (f *fakeState) Syncers() []*proxier.Syncer      { return f.syncers }
func (f *fakeState) LastSnapshot() *proxier.Snapshot { return f.snap }

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

func TestHealthSemantics(t *testing.T) {
	st := &fakeState{healthy: true}
	h := HealthHandler(st)
	if code, body := get(t, h, "/healthz"); code != 200 || !strings.Contains(body, `"nodeEligible": true`) {
		t.Errorf("healthy: %d %s", code, body)
	}
	// A requested sync has not completed in time: both fail.
	st.healthy = false
	if code, _ := get(t, h, "/healthz"); code != 503 {
		t.Errorf("stale sync: /healthz %d, want 503", code)
	}
	if code, _ := get(t, h, "/livez"); code != 503 {
		t.Errorf("stale sync: /livez %d, want 503", code)
	}
	// The node is being deleted: not eligible, but alive.
	st.healthy, st.deleting = true, true
	if code, body := get(t, h, "/healthz"); code != 503 || !strings.Contains(body, `"nodeEligible": false`) {
		t.Errorf("deleting node: /healthz %d %s", code, body)
	}
	if code, _ := get(t, h, "/livez"); code != 200 {
		t.Errorf("deleting node: /livez %d, want 200", code)
	}
	var parsed map[string]any
	_, body := get(t, h, "/livez")
	if err := json.Unmarshal([]byte(body), &parsed); err != nil || parsed["lastUpdated"] == "" {
		t.Errorf("livez body %q: %v", body, err)
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
	h := MetricsHandler(st, false)

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
