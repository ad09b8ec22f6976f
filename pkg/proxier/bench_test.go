package proxier

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// benchSnapshot is n Services of one port with m endpoints each, the shape
// of `make bench`.
func benchSnapshot(n, m int) *Snapshot {
	snap := NewSnapshot()
	snap.Node = NodeInfo{Name: "node-a", Known: true, Addresses: []netip.Addr{netip.MustParseAddr("192.168.0.1")}}
	for i := range n {
		name := ServicePortName{Namespace: "bench", Name: fmt.Sprintf("svc-%05d", i), Port: "http", Protocol: v1.ProtocolTCP}
		snap.Services[name] = &ServicePort{Name: name, Port: 80, ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96 + byte(i>>16), byte(i >> 8), byte(i)})}}
		eps := make([]Endpoint, m)
		for e := range m {
			eps[e] = Endpoint{Addr: netip.AddrFrom4([4]byte{10, 244, byte(e), byte(i)}), Port: 8080, Ready: true, Serving: true}
		}
		snap.Endpoints[name] = eps
	}
	return snap
}

// spreadSnapshot is benchSnapshot with the endpoints spread over nodes
// nodes, as a node of a real cluster sees them: endpoint e of Service i runs
// on node (i*m+e) mod nodes; node 0 is the node under test, and its pod
// CIDR holds its endpoints' addresses.
func spreadSnapshot(n, m, nodes int) *Snapshot {
	snap := benchSnapshot(n, m)
	snap.Node.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("10.245.0.0/16")}
	for name, eps := range snap.Endpoints {
		i := 0
		if _, err := fmt.Sscanf(name.Name, "svc-%05d", &i); err != nil {
			panic(err)
		}
		for e := range eps {
			node := (i*m + e) % nodes
			eps[e].NodeName = fmt.Sprintf("node-%d", node)
			if node == 0 {
				eps[e].NodeName = "node-a"
				eps[e].Addr = netip.AddrFrom4([4]byte{10, 245, byte(e), byte(i)})
			}
		}
	}
	return snap
}

// BenchmarkRender10kSpread renders 10,000 Services x 10 endpoints spread
// over 50 nodes and reports the size of the nat table it writes.
func BenchmarkRender10kSpread(b *testing.B) {
	snap := spreadSnapshot(10000, 10, 50)
	b.ReportAllocs()
	var rules *Rules
	for b.Loop() {
		rules = Render(snap, benchConfig)
	}
	chains, n := 0, 0
	if t := rules.Table(TableNAT); t != nil {
		for _, c := range t.Chains {
			chains++
			n += len(c.Rules)
		}
	}
	b.ReportMetric(float64(n), "nat-rules")
	b.ReportMetric(float64(chains), "nat-chains")
	b.ReportMetric(float64(len(RestoreText(rules))), "restore-bytes")
}

var benchConfig = RenderConfig{Family: v1.IPv4Protocol, MasqueradeBit: 14, ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16")}

// BenchmarkRender10k renders 10,000 Services x 10 endpoints.
func BenchmarkRender10k(b *testing.B) {
	snap := benchSnapshot(10000, 10)
	b.ReportAllocs()
	for b.Loop() {
		Render(snap, benchConfig)
	}
}

// BenchmarkSyncOneChange10k is the Go side of a partial sync at 10,000
// Services after one endpoint changed: render (reusing unchanged ports),
// diff against what was applied, and write the restore text.
func BenchmarkSyncOneChange10k(b *testing.B) {
	snap := benchSnapshot(10000, 10)
	var r Renderer
	last := r.Render(snap, benchConfig)
	name := ServicePortName{Namespace: "bench", Name: "svc-05000", Port: "http", Protocol: v1.ProtocolTCP}
	full := snap.Endpoints[name]
	b.ReportAllocs()
	var bytes int
	i := 0
	for b.Loop() {
		// Alternate between nine and ten endpoints: a new slice each time,
		// as the tracker hands over.
		i++
		if i%2 == 1 {
			snap.Endpoints[name] = slices.Clone(full[1:])
		} else {
			snap.Endpoints[name] = slices.Clone(full)
		}
		next := r.Render(snap, benchConfig)
		text, _ := partialRestore(next, last)
		bytes = len(text)
		last = next
	}
	b.ReportMetric(float64(bytes), "restore-bytes")
}
