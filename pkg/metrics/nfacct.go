package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// kube-proxy's packet counters read from nfacct objects at scrape time.
var (
	invalidDroppedDesc = prometheus.NewDesc("kubeproxy_iptables_ct_state_invalid_dropped_packets_total",
		"packets dropped by iptables to work around conntrack problems", nil, nil)
	localhostNodePortsDesc = prometheus.NewDesc("kubeproxy_iptables_localhost_nodeports_accepted_packets_total",
		"Number of packets accepted on nodeports of loopback interface", nil, nil)
)

// NFAcctCollector publishes the nfacct counters that exist; Read returns a
// counter's packets.
type NFAcctCollector struct {
	Read func(name string) (uint64, error)
	// InvalidDropped and LocalhostNodePorts are the counters' names, empty
	// when that counter is not in use.
	InvalidDropped, LocalhostNodePorts string
}

// Describe implements prometheus.Collector.
func (c NFAcctCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- invalidDroppedDesc
	ch <- localhostNodePortsDesc
}

// Collect implements prometheus.Collector: a counter that cannot be read
// is left out of this scrape.
func (c NFAcctCollector) Collect(ch chan<- prometheus.Metric) {
	for _, m := range []struct {
		name string
		desc *prometheus.Desc
	}{{c.InvalidDropped, invalidDroppedDesc}, {c.LocalhostNodePorts, localhostNodePortsDesc}} {
		if m.name == "" {
			continue
		}
		if n, err := c.Read(m.name); err == nil {
			ch <- prometheus.MustNewConstMetric(m.desc, prometheus.CounterValue, float64(n))
		}
	}
}

// RegisterOnce adds a collector to Registry, ignoring a second registration
// of the same metrics (a daemon started twice in one process, in tests).
func RegisterOnce(c prometheus.Collector) {
	_ = Registry.Register(c)
}
