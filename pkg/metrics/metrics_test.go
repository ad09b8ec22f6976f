package metrics

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clientmetrics "k8s.io/client-go/tools/metrics"
)

func TestNFAcctCollectorPublishesReadableCounters(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(NFAcctCollector{
		Read: func(name string) (uint64, error) {
			if name == "ct_state_invalid_dropped_pkts" {
				return 7, nil
			}
			return 0, errors.New("gone")
		},
		InvalidDropped: "ct_state_invalid_dropped_pkts", LocalhostNodePorts: "localhost_nps_accepted_pkts",
	})
	want := `# HELP kubeproxy_iptables_ct_state_invalid_dropped_packets_total packets dropped by iptables to work around conntrack problems
# TYPE kubeproxy_iptables_ct_state_invalid_dropped_packets_total counter
kubeproxy_iptables_ct_state_invalid_dropped_packets_total 7
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

func TestClientGoMetricsAreWired(t *testing.T) {
	clientmetrics.RequestResult.Increment(context.Background(), "200", "GET", "api:6443")
	clientmetrics.RequestLatency.Observe(context.Background(), "GET", url.URL{Host: "api:6443"}, 30*time.Millisecond)
	if v := testutil.ToFloat64(RESTRequests.WithLabelValues("200", "GET", "api:6443")); v < 1 {
		t.Errorf("rest_client_requests_total = %v", v)
	}
	if n := testutil.CollectAndCount(RESTRequestLatency); n < 1 {
		t.Errorf("rest_client_request_duration_seconds has %d series", n)
	}
	SetBuildInfo("v9.9.9", "")
	if v := testutil.ToFloat64(BuildInfo); v != 1 {
		t.Errorf("kubernetes_build_info = %v", v)
	}
}
