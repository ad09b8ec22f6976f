package proxier

import (
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
)

// policyMatrix adds to snap one reachable-from-outside Service per pair of
// traffic policies (internal and external, Cluster and Local), each with a
// NodePort, an external IP and a load balancer IP, one endpoint on this
// node and one on another.
func policyMatrix(snap *Snapshot) {
	i := 0
	for _, itpLocal := range []bool{false, true} {
		for _, etpLocal := range []bool{false, true} {
			i++
			name := spn(fmt.Sprintf("itp-%v-etp-%v", itpLocal, etpLocal), "http")
			vip := netip.AddrFrom4([4]byte{10, 96, 90, byte(i)})
			eip := netip.AddrFrom4([4]byte{203, 0, 113, byte(100 + i)})
			lb := netip.AddrFrom4([4]byte{198, 51, 100, byte(100 + i)})
			np := int32(31000 + i)
			snap.Services[name] = &ServicePort{Name: name, Port: 80, NodePort: np, ClusterIPs: []netip.Addr{vip},
				ExternalIPs: []netip.Addr{eip}, LoadBalancerIPs: []netip.Addr{lb},
				InternalPolicyLocal: itpLocal, ExternalPolicyLocal: etpLocal}
			snap.Endpoints[name] = []Endpoint{
				{Addr: netip.AddrFrom4([4]byte{10, 244, 1, byte(100 + i)}), Port: 8080, Ready: true, Serving: true, NodeName: "node-a"},
				{Addr: netip.AddrFrom4([4]byte{10, 244, 2, byte(100 + i)}), Port: 8080, Ready: true, Serving: true, NodeName: "node-b"},
			}
		}
	}
}

// fatesOf is a trace's outcomes without the path taken: what happens to
// the packet, sorted.
func fatesOf(rs *iptables.Ruleset, f flow) []string {
	var out []string
	for _, o := range traceIn(rs, f).Outcomes {
		out = append(out, fmt.Sprintf("%s dnat=%s masq=%v snat=%s", o.Verdict, o.DNAT, o.Masquerade, o.SNAT))
	}
	slices.Sort(out)
	return out
}

// Above LargeClusterEndpoints endpoints the rules take shorter forms (no
// comments below the dispatch rule, remote endpoints without chains, the
// Service chain's masquerade check without the address and port its
// dispatch rule matched). Every packet must fare exactly as with the full
// forms: every traffic policy pair, every kind of address, from pods on
// this node and others, the node itself, the endpoints and the outside.
func TestLargeClusterKeepsEveryFate(t *testing.T) {
	small := loadSnapshot(t, "external.yaml", "node-a")
	policyMatrix(small)
	var dsts []string
	for _, svc := range small.Services {
		if vip, ok := svc.ClusterIP(v1.IPv4Protocol); ok {
			dsts = append(dsts, netip.AddrPortFrom(vip, uint16(svc.Port)).String())
			for _, a := range append(slices.Clone(svc.ExternalIPs), svc.LoadBalancerIPs...) {
				if a.Is4() {
					dsts = append(dsts, netip.AddrPortFrom(a, uint16(svc.Port)).String())
				}
			}
			if svc.NodePort != 0 {
				dsts = append(dsts, netip.AddrPortFrom(nodeIP, uint16(svc.NodePort)).String())
			}
		}
	}
	large := &Snapshot{Services: maps.Clone(small.Services), Endpoints: maps.Clone(small.Endpoints), Node: small.Node, HostAddrs: small.HostAddrs}
	for i := 0; i <= LargeClusterEndpoints/10; i++ {
		addService(large, fmt.Sprintf("filler%d", i), fmt.Sprintf("10.97.%d.%d", i/200, i%200+10), 10)
	}
	sources := []netip.Addr{otherPod, localPod, outsideIP, nodeIP}
	for _, eps := range small.Endpoints {
		for _, ep := range eps {
			sources = append(sources, ep.Addr)
		}
	}
	configs := map[string]func(*RenderConfig){
		"cluster CIDR":   func(*RenderConfig) {},
		"masquerade all": func(c *RenderConfig) { c.MasqueradeAll = true },
		"interface name prefix": func(c *RenderConfig) {
			c.DetectLocal = LocalDetector{Mode: DetectInterfaceNamePrefix, Interface: "veth"}
		},
	}
	checked := 0
	for what, mutate := range configs {
		cfg := defaultConfig()
		mutate(&cfg)
		rendered := []*Rules{Render(small, cfg), Render(large, cfg)}
		if rendered[0].key == rendered[1].key {
			t.Fatal("both snapshots render in one mode")
		}
		var parsed []*iptables.Ruleset
		for _, r := range rendered {
			rs, err := iptables.ParseSave(RestoreText(r))
			if err != nil {
				t.Fatal(err)
			}
			parsed = append(parsed, rs)
		}
		for _, dst := range dsts {
			for _, src := range sources {
				for _, iface := range []string{"", "veth12", "eth0"} {
					for _, proto := range []string{"tcp", "udp"} {
						f := flow{src: src, dst: dst, proto: proto, iface: iface}
						a, b := fatesOf(parsed[0], f), fatesOf(parsed[1], f)
						if !reflect.DeepEqual(a, b) {
							t.Errorf("%s: %s (in %q) -> %s %s: %v with the full forms, %v with the large cluster's", what, src, iface, proto, dst, a, b)
						}
						checked++
					}
				}
			}
		}
	}
	t.Logf("%d flows to %d addresses", checked, len(dsts))
}
