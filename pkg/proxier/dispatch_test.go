package proxier_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/internal/fuzzgen"
	"github.com/switchyard-proxy/switchyard/pkg/iptables"
	"github.com/switchyard-proxy/switchyard/pkg/proxier"
)

// flat is a leaf size no test list reaches: the dispatch stays a flat list.
const flat = 1 << 30

// fates summarises what may become of a packet, path aside: the tree only
// changes the path.
func fates(rs *iptables.Ruleset, src, dst netip.Addr, port int, proto string, local []netip.Addr) []string {
	tr := iptables.TracePacket(rs, iptables.TraceInput{
		Packet:     iptables.Packet{Src: src, Dst: dst, DstPort: port, SrcPort: 40000, Protocol: proto},
		LocalAddrs: local,
	})
	var out []string
	for _, o := range tr.Outcomes {
		out = append(out, fmt.Sprintf("%s dnat=%s masq=%v mark=%#x", o.Verdict, o.DNAT, o.Masquerade, o.Mark))
	}
	slices.Sort(out)
	return out
}

// probes are the packets worth sending at a snapshot: every Service
// address and port, its neighbours, and every NodePort on a node address.
type probe struct {
	dst   netip.Addr
	port  int
	proto string
}

func probes(snap *proxier.Snapshot, node netip.Addr) []probe {
	var out []probe
	add := func(a netip.Addr, port int32, proto v1.Protocol) {
		p := strings.ToLower(string(proto))
		out = append(out, probe{a, int(port), p}, probe{a, int(port) + 1, p}, probe{a.Next(), int(port), p}, probe{a, int(port), "udp"})
	}
	for _, sp := range snap.Services {
		var addrs []netip.Addr
		addrs = append(addrs, sp.ClusterIPs...)
		addrs = append(addrs, sp.ExternalIPs...)
		addrs = append(addrs, sp.LoadBalancerIPs...)
		for _, a := range addrs {
			add(a, sp.Port, sp.Name.Protocol)
		}
		if sp.NodePort != 0 {
			add(node, sp.NodePort, sp.Name.Protocol)
		}
		if sp.HealthCheckNodePort != 0 {
			add(node, sp.HealthCheckNodePort, v1.ProtocolTCP)
		}
	}
	return out
}

// sameFates renders snap flat and as trees of small leaves, and requires
// every probe, from a pod, from outside and from the node, to end alike.
func sameFates(t *testing.T, snap *proxier.Snapshot, cfg proxier.RenderConfig, node netip.Addr, sources []netip.Addr) {
	t.Helper()
	cfg.DispatchLeafSize = flat
	want, err := iptables.ParseSave(proxier.RestoreText(proxier.Render(snap, cfg)))
	if err != nil {
		t.Fatal(err)
	}
	ps := probes(snap, node)
	for _, leaf := range []int{1, 2, 3} {
		cfg.DispatchLeafSize = leaf
		text := proxier.RestoreText(proxier.Render(snap, cfg))
		got, err := iptables.ParseSave(text)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			for _, src := range sources {
				if p.dst.Is4() != src.Is4() {
					continue
				}
				w := fates(want, src, p.dst, p.port, p.proto, []netip.Addr{node})
				g := fates(got, src, p.dst, p.port, p.proto, []netip.Addr{node})
				if !slices.Equal(w, g) {
					t.Fatalf("leaf size %d: %s -> %s:%d/%s: tree gives %v, flat list %v\n%s", leaf, src, p.dst, p.port, p.proto, g, w, text)
				}
			}
		}
	}
}

// FuzzDispatchTree: for any snapshot the dispatch trees send every packet
// where the flat lists send it.
func FuzzDispatchTree(f *testing.F) {
	for _, seed := range []string{"", "\x05\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a", "dispatch-tree-with-many-services-\xff\xfe\xfd\xfc\xfb\xfa"} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		snap := fuzzgen.Snapshot(data)
		for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
			node, pod, outside := netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("10.244.1.7"), netip.MustParseAddr("172.16.0.9")
			if fam == v1.IPv6Protocol {
				node, pod, outside = netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::7"), netip.MustParseAddr("2001:db8::9")
			}
			sameFates(t, snap, fuzzgen.Config(data, fam), node, []netip.Addr{node, pod, outside})
		}
	})
}

// bigSnapshot is n Services spread over a /16, some with NodePorts,
// external and load balancer IPs, some without endpoints.
func bigSnapshot(n int) *proxier.Snapshot {
	snap := proxier.NewSnapshot()
	snap.Node = proxier.NodeInfo{Name: "node-a", Known: true, Addresses: []netip.Addr{netip.MustParseAddr("192.168.0.1")}}
	snap.HostAddrs = snap.Node.Addresses
	for i := range n {
		name := proxier.ServicePortName{Namespace: "bench", Name: fmt.Sprintf("svc-%05d", i), Port: "http", Protocol: v1.ProtocolTCP}
		sp := &proxier.ServicePort{Name: name, Port: 80, ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i * 7 >> 8), byte(i * 7)})}}
		if i%5 == 0 {
			sp.NodePort = int32(30000 + i%2768)
		}
		if i%11 == 0 {
			sp.ExternalIPs = []netip.Addr{netip.AddrFrom4([4]byte{203, 0, byte(i >> 8), byte(i)})}
		}
		if i%13 == 0 {
			sp.LoadBalancerIPs = []netip.Addr{netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})}
			sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("172.16.0.0/12")}
			sp.ExternalPolicyLocal = i%2 == 0
		}
		snap.Services[name] = sp
		if i%17 == 0 {
			continue // no endpoints: REJECT in the filter table
		}
		for e := range 3 {
			snap.Endpoints[name] = append(snap.Endpoints[name], proxier.Endpoint{
				Addr: netip.AddrFrom4([4]byte{10, 244, byte(e), byte(i)}), Port: 8080, Ready: true, NodeName: []string{"node-a", "node-b", "node-c"}[e]})
		}
	}
	return snap
}

func TestDispatchTreeBehavesAsFlatList(t *testing.T) {
	snap := bigSnapshot(300)
	cfg := proxier.RenderConfig{Family: v1.IPv4Protocol, MasqueradeBit: 14, ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16")}
	sameFates(t, snap, cfg, netip.MustParseAddr("192.168.0.1"),
		[]netip.Addr{netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("10.244.9.9"), netip.MustParseAddr("172.16.0.9"), netip.MustParseAddr("8.8.8.8")})
}

// longestWalk is the most rules a packet can cross in one dispatch tree:
// the longest root-to-leaf sum of chain lengths.
func longestWalk(chains map[string][]string, name string) int {
	most := 0
	for _, r := range chains[name] {
		if _, target, ok := strings.Cut(r, "-j "); ok && proxier.IsDispatchChain(target) {
			most = max(most, longestWalk(chains, target))
		}
	}
	return len(chains[name]) + most
}

func TestDispatchTreeIsShallowAndLocal(t *testing.T) {
	cfg := proxier.RenderConfig{Family: v1.IPv4Protocol, MasqueradeBit: 14, ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16")}
	snap := bigSnapshot(10000)
	before := proxier.Render(snap, cfg)
	chains := map[string][]string{}
	for _, c := range before.Table("nat").Chains {
		chains[c.Name] = c.Rules
	}
	// 10,000 Services: a connection crosses a few dozen rules, not 10,000.
	t.Logf("longest walk: SWY-SERVICES %d rules, SWY-NODEPORTS %d", longestWalk(chains, proxier.ChainServices), longestWalk(chains, proxier.ChainNodePorts))
	if got := longestWalk(chains, proxier.ChainServices); got > 80 {
		t.Errorf("longest walk through SWY-SERVICES = %d rules, want at most 80", got)
	}
	if got := longestWalk(chains, proxier.ChainNodePorts); got > 80 {
		t.Errorf("longest walk through SWY-NODEPORTS = %d rules, want at most 80", got)
	}

	// One more Service: only its own chains and one dispatch leaf change
	// (and the leaf's parents, if it grew into a node).
	name := proxier.ServicePortName{Namespace: "bench", Name: "new", Port: "http", Protocol: v1.ProtocolTCP}
	snap.Services[name] = &proxier.ServicePort{Name: name, Port: 80, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.200.1")}}
	snap.Endpoints[name] = []proxier.Endpoint{{Addr: netip.MustParseAddr("10.244.0.1"), Port: 8080, Ready: true}}
	after := proxier.Render(snap, cfg)
	var changed []string
	old := map[string][]string{}
	for _, c := range before.Table("nat").Chains {
		old[c.Name] = c.Rules
	}
	rules := 0
	for _, c := range after.Table("nat").Chains {
		if prev, ok := old[c.Name]; !ok || !slices.Equal(prev, c.Rules) {
			changed = append(changed, c.Name)
			rules += len(c.Rules)
		}
	}
	if len(changed) > 6 || rules > 60 {
		t.Errorf("adding one Service rewrote %d chains (%d rules): %v", len(changed), rules, changed)
	}
}
