package proxier

import (
	"maps"
	"net/netip"
	"strings"
	"testing"
)

var localPod = netip.MustParseAddr("10.244.1.99") // a pod on node-a

func internalRules(t *testing.T, mutate func(*RenderConfig, *Snapshot)) *Rules {
	snap := loadSnapshot(t, "internal.yaml", "node-a")
	cfg := defaultConfig()
	if mutate != nil {
		mutate(&cfg, snap)
	}
	return Render(snap, cfg)
}

func TestInternalTrafficPolicyLocal(t *testing.T) {
	r := internalRules(t, nil)
	runFlows(t, r, []flow{
		{src: localPod, dst: "10.96.60.1:80", proto: "tcp", want: want{endpoints: []string{"10.244.1.40:8080"}, masq: no, verdict: "ACCEPT"}},
		{src: theNode, dst: "10.96.60.1:80", proto: "tcp", want: want{endpoints: []string{"10.244.1.40:8080"}, masq: yes, verdict: "ACCEPT"}},
		// No local endpoint: dropped, not rejected.
		{src: localPod, dst: "10.96.60.2:80", proto: "tcp", want: want{verdict: "DROP", why: "in/itp-remote:http has no local endpoints"}},
		{src: theNode, dst: "10.96.60.2:80", proto: "tcp", want: want{verdict: "DROP", why: "has no local endpoints"}},
	})
}

func TestTopologyHints(t *testing.T) {
	r := internalRules(t, nil)
	// Every endpoint hinted, some for our zone: only those.
	runFlows(t, r, []flow{
		{src: localPod, dst: "10.96.60.3:80", proto: "tcp", want: want{endpoints: []string{"10.244.1.50:8080", "10.244.3.50:8080"}, verdict: "ACCEPT"}},
		// One endpoint without hints: hints ignored.
		{src: localPod, dst: "10.96.60.4:80", proto: "tcp", want: want{endpoints: []string{"10.244.1.51:8080", "10.244.2.51:8080"}, verdict: "ACCEPT"}},
		// No endpoint hinted for our zone: all endpoints.
		{src: localPod, dst: "10.96.60.5:80", proto: "tcp", want: want{endpoints: []string{"10.244.2.52:8080", "10.244.2.53:8080"}, verdict: "ACCEPT"}},
		// Node hints win over zone hints.
		{src: localPod, dst: "10.96.60.6:80", proto: "tcp", want: want{endpoints: []string{"10.244.1.60:8080"}, verdict: "ACCEPT"}},
	})

	// Our Node moves to zone-b: the same snapshot renders zone-b's endpoint.
	moved := internalRules(t, func(_ *RenderConfig, s *Snapshot) { s.Node.Zone = "zone-b" })
	runFlows(t, moved, []flow{
		{src: localPod, dst: "10.96.60.3:80", proto: "tcp", want: want{endpoints: []string{"10.244.2.50:8080"}, verdict: "ACCEPT"}},
	})
	// A node without a zone label ignores zone hints.
	unzoned := internalRules(t, func(_ *RenderConfig, s *Snapshot) { s.Node.Zone = "" })
	runFlows(t, unzoned, []flow{
		{src: localPod, dst: "10.96.60.3:80", proto: "tcp", want: want{endpoints: []string{"10.244.1.50:8080", "10.244.2.50:8080", "10.244.3.50:8080"}, verdict: "ACCEPT"}},
	})
	// No ready endpoint in our zone but terminating ones elsewhere: terminating fallback ignores topology.
	onlyTerminating := internalRules(t, func(_ *RenderConfig, s *Snapshot) {
		n := ServicePortName{Namespace: "in", Name: "zoned", Port: "http", Protocol: "TCP"}
		for i := range s.Endpoints[n] {
			s.Endpoints[n][i].Ready, s.Endpoints[n][i].Serving, s.Endpoints[n][i].Terminating = false, true, true
		}
	})
	runFlows(t, onlyTerminating, []flow{
		{src: localPod, dst: "10.96.60.3:80", proto: "tcp", want: want{endpoints: []string{"10.244.1.50:8080", "10.244.2.50:8080", "10.244.3.50:8080"}, verdict: "ACCEPT"}},
	})
}

func TestDetectLocalModes(t *testing.T) {
	const vip = "10.96.60.4:80" // two endpoints, no topology
	otherNodePod := netip.MustParseAddr("10.244.2.99")

	// NodeCIDR: only this node's pod CIDR counts as pod traffic.
	r := internalRules(t, func(c *RenderConfig, _ *Snapshot) { c.DetectLocal = LocalDetector{Mode: DetectNodeCIDR} })
	runFlows(t, r, []flow{
		{src: localPod, dst: vip, proto: "tcp", want: want{endpoints: []string{"10.244.1.51:8080", "10.244.2.51:8080"}, masq: no, verdict: "ACCEPT"}},
		{src: otherNodePod, dst: vip, proto: "tcp", want: want{endpoints: []string{"10.244.1.51:8080", "10.244.2.51:8080"}, masq: yes, verdict: "ACCEPT"}},
	})
	// NodeCIDR before the Node's podCIDR is known: nothing is detected.
	early := internalRules(t, func(c *RenderConfig, s *Snapshot) {
		c.DetectLocal = LocalDetector{Mode: DetectNodeCIDR}
		s.Node.PodCIDRs = nil
	})
	svc := ServiceChainName(ServicePortName{Namespace: "in", Name: "zoned-partial", Port: "http", Protocol: "TCP"})
	if rules := strings.Join(chainRules(early, TableNAT, svc), "\n"); strings.Contains(rules, ChainMarkMasq) {
		t.Errorf("NodeCIDR masquerade rule rendered without a pod CIDR:\n%s", rules)
	}
	if rules := strings.Join(chainRules(r, TableNAT, svc), "\n"); !strings.Contains(rules, "! -s 10.244.1.0/24") {
		t.Errorf("NodeCIDR masquerade rule missing:\n%s", rules)
	}

	for _, c := range []struct {
		det        LocalDetector
		podIf, out string
	}{
		{LocalDetector{Mode: DetectBridgeInterface, Interface: "cbr0"}, "cbr0", "eth0"},
		{LocalDetector{Mode: DetectInterfaceNamePrefix, Interface: "veth"}, "veth1234", "eth0"},
	} {
		r := internalRules(t, func(cfg *RenderConfig, _ *Snapshot) { cfg.DetectLocal = c.det })
		if tr := traceRules(t, r, flow{src: localPod, dst: vip, iface: c.podIf}); tr.Outcomes[0].Masquerade {
			t.Errorf("%s: traffic from %s was masqueraded:\n%s", c.det.Mode, c.podIf, tr.Text())
		}
		if tr := traceRules(t, r, flow{src: localPod, dst: vip, iface: c.out}); !tr.Outcomes[0].Masquerade {
			t.Errorf("%s: traffic from %s was not masqueraded:\n%s", c.det.Mode, c.out, tr.Text())
		}
	}
}

// A Service port's cost, which bounds a restore's size, is exactly the
// rules its presence adds to the rendered tables: taking it out of the
// snapshot removes that many.
func TestPortCostIsWhatThePortAdds(t *testing.T) {
	for _, file := range []string{"basic.yaml", "remote.yaml", "external.yaml", "internal.yaml", "affinity.yaml", "terminating.yaml", "multiport.yaml"} {
		t.Run(file, func(t *testing.T) {
			snap := loadSnapshot(t, file, "node-a")
			cfg := defaultConfig()
			all := Render(snap, cfg)
			for _, name := range snap.SortedNames() {
				without := &Snapshot{Services: maps.Clone(snap.Services), Endpoints: maps.Clone(snap.Endpoints),
					Node: snap.Node, HostAddrs: snap.HostAddrs}
				delete(without.Services, name)
				delete(without.Endpoints, name)
				want := ruleCount(all) - ruleCount(Render(without, cfg))
				if got := portCost(all, name); got != want {
					t.Errorf("%s costs %d, but its rules are %d", name, got, want)
				}
			}
		})
	}
}
