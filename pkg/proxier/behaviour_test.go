package proxier

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// The node of the behaviour tests, and addresses around it.
var (
	podA       = netip.MustParseAddr("10.244.1.5") // an endpoint of default/web
	otherPod   = netip.MustParseAddr("10.244.3.9") // a pod that is no endpoint
	outsideIP  = netip.MustParseAddr("172.16.0.9") // a host outside the cluster
	webVIP     = "10.96.0.10:80"
	webEPs     = []string{"10.244.1.5:8080", "10.244.2.7:8080"}
	emptyVIP   = "10.96.0.11:53"
	stickyVIP  = "10.96.10.1:80"
	dnsVIP     = "10.96.0.53:53"
	rollingVIP = "10.96.20.1:80"
)

func TestPodToClusterIPReachesEveryEndpointUnmasqueraded(t *testing.T) {
	tr := traceRules(t, Render(loadSnapshot(t, "basic.yaml", "node-a"), defaultConfig()), flow{src: otherPod, dst: webVIP, proto: "tcp"})
	if got := tr.Endpoints(); !reflect.DeepEqual(got, webEPs) {
		t.Errorf("endpoints = %v, want %v\n%s", got, webEPs, tr.Text())
	}
	if _, none := masqueraded(tr); !none {
		t.Errorf("pod traffic to a ClusterIP was masqueraded:\n%s", tr.Text())
	}
	if tr.Local {
		t.Error("a pod source was treated as local")
	}
	if got := tr.Verdicts(); !reflect.DeepEqual(got, []string{"ACCEPT"}) {
		t.Errorf("verdicts = %v", got)
	}
}

func TestNodeToClusterIPIsMasqueraded(t *testing.T) {
	tr := traceRules(t, Render(loadSnapshot(t, "basic.yaml", "node-a"), defaultConfig()), flow{src: nodeIP, dst: webVIP, proto: "tcp"})
	if !tr.Local {
		t.Error("the node's own address did not enter through OUTPUT")
	}
	if got := tr.Endpoints(); !reflect.DeepEqual(got, webEPs) {
		t.Errorf("endpoints = %v, want %v", got, webEPs)
	}
	if all, _ := masqueraded(tr); !all {
		t.Errorf("node traffic to a ClusterIP was not masqueraded:\n%s", tr.Text())
	}
}

func TestOffClusterSourceIsMasqueraded(t *testing.T) {
	tr := traceRules(t, Render(loadSnapshot(t, "basic.yaml", "node-a"), defaultConfig()), flow{src: outsideIP, dst: webVIP, proto: "tcp"})
	if all, _ := masqueraded(tr); !all {
		t.Errorf("traffic from outside the cluster CIDR was not masqueraded:\n%s", tr.Text())
	}
}

func TestHairpinIsMasqueraded(t *testing.T) {
	tr := traceRules(t, Render(loadSnapshot(t, "basic.yaml", "node-a"), defaultConfig()), flow{src: podA, dst: webVIP, proto: "tcp"})
	// Both endpoints must be reached, or a trace with no outcomes (a rule
	// set that drops the Service) would pass.
	if got := tr.Endpoints(); !reflect.DeepEqual(got, webEPs) {
		t.Fatalf("endpoints = %v, want %v\n%s", got, webEPs, tr.Text())
	}
	for _, o := range tr.Outcomes {
		switch o.DNAT {
		case "10.244.1.5:8080":
			if !o.Masquerade {
				t.Errorf("a pod reaching itself through its Service was not masqueraded:\n%s", tr.Text())
			}
		case "10.244.2.7:8080":
			if o.Masquerade {
				t.Errorf("a pod reaching another endpoint was masqueraded:\n%s", tr.Text())
			}
		}
	}
}

func TestMasqueradeAllAndNoClusterCIDR(t *testing.T) {
	snap := loadSnapshot(t, "basic.yaml", "node-a")
	cfg := defaultConfig()
	cfg.MasqueradeAll = true
	if all, _ := masqueraded(traceRules(t, Render(snap, cfg), flow{src: otherPod, dst: webVIP, proto: "tcp"})); !all {
		t.Error("--masquerade-all did not masquerade pod traffic")
	}
	cfg = defaultConfig()
	cfg.ClusterCIDR = netip.Prefix{}
	if _, none := masqueraded(traceRules(t, Render(snap, cfg), flow{src: outsideIP, dst: webVIP, proto: "tcp"})); !none {
		t.Error("without --cluster-cidr, ClusterIP traffic from outside was masqueraded")
	}
}

func TestMasqueradeBitIsHonoured(t *testing.T) {
	cfg := defaultConfig()
	cfg.MasqueradeBit = 3
	tr := traceRules(t, Render(loadSnapshot(t, "basic.yaml", "node-a"), cfg), flow{src: nodeIP, dst: webVIP, proto: "tcp"})
	if all, _ := masqueraded(tr); !all {
		t.Errorf("not masqueraded with bit 3:\n%s", tr.Text())
	}
	text := RestoreText(Render(loadSnapshot(t, "basic.yaml", "node-a"), cfg))
	if !strings.Contains(text, "--or-mark 0x8") || strings.Contains(text, "0x4000") {
		t.Errorf("mark bit 3 is not 0x8 throughout:\n%s", text)
	}
}

func TestNoEndpointsRejects(t *testing.T) {
	snap := loadSnapshot(t, "basic.yaml", "node-a")
	for _, src := range []netip.Addr{otherPod, nodeIP} {
		tr := traceRules(t, Render(snap, defaultConfig()), flow{src: src, dst: emptyVIP, proto: "udp"})
		if got := tr.Verdicts(); !reflect.DeepEqual(got, []string{"REJECT"}) {
			t.Errorf("from %s: verdicts = %v, want REJECT\n%s", src, got, tr.Text())
		}
		if !strings.Contains(tr.Summary(), "default/empty has no endpoints") {
			t.Errorf("summary does not name the Service: %q", tr.Summary())
		}
	}
}

func TestWrongPortOrProtocolDoesNotMatch(t *testing.T) {
	snap := loadSnapshot(t, "basic.yaml", "node-a")
	for _, c := range []struct{ dst, proto string }{{"10.96.0.10:81", "tcp"}, {webVIP, "udp"}, {"10.96.0.12:80", "tcp"}, {"10.96.0.11:53", "tcp"}} {
		tr := traceRules(t, Render(snap, defaultConfig()), flow{src: otherPod, dst: c.dst, proto: c.proto})
		if eps := tr.Endpoints(); len(eps) != 0 {
			t.Errorf("%s %s: reached %v", c.proto, c.dst, eps)
		}
		if got := tr.Verdicts(); !reflect.DeepEqual(got, []string{"ACCEPT"}) {
			t.Errorf("%s %s: verdicts %v, want untouched ACCEPT", c.proto, c.dst, got)
		}
	}
}

func TestMultiPortNamedTargetPorts(t *testing.T) {
	snap := loadSnapshot(t, "multiport.yaml", "node-a")
	cases := []struct {
		dst, proto string
		want       []string
	}{
		{dnsVIP, "udp", []string{"10.244.1.2:5353", "10.244.2.2:5353", "10.244.4.2:5353"}},
		{dnsVIP, "tcp", []string{"10.244.1.2:5353", "10.244.2.2:5353"}},
		{"10.96.0.53:9153", "tcp", []string{"10.244.1.2:9153", "10.244.2.2:9153"}},
		{"10.96.0.53:7777", "sctp", []string{"10.244.1.2:7777", "10.244.2.2:7777"}},
	}
	for _, c := range cases {
		tr := traceRules(t, Render(snap, defaultConfig()), flow{src: otherPod, dst: c.dst, proto: c.proto})
		if got := tr.Endpoints(); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s %s: endpoints %v, want %v", c.proto, c.dst, got, c.want)
		}
	}
}

func TestSessionAffinityRules(t *testing.T) {
	snap := loadSnapshot(t, "affinity.yaml", "node-a")
	rules := Render(snap, defaultConfig())
	n := ServicePortName{Namespace: "shop", Name: "sticky", Port: "web", Protocol: v1.ProtocolTCP}
	svc := chainRules(rules, TableNAT, ServiceChainName(n))
	checks := 0
	for _, ep := range snap.Endpoints[n] {
		sep := EndpointChainName(n, ep)
		want := "-m recent --name " + sep + " --rcheck --seconds 10800 --reap -j " + sep
		found := false
		for _, r := range svc {
			found = found || strings.Contains(r, want)
		}
		if !found {
			t.Errorf("service chain has no affinity check for %s:\n%s", ep, strings.Join(svc, "\n"))
		}
		set := false
		for _, r := range chainRules(rules, TableNAT, sep) {
			set = set || strings.Contains(r, "-m recent --name "+sep+" --set") && strings.Contains(r, "DNAT")
		}
		if !set {
			t.Errorf("endpoint chain %s does not record affinity", sep)
		}
		checks++
	}
	if checks != 3 {
		t.Fatalf("expected 3 endpoints, got %d", checks)
	}
	short := ServicePortName{Namespace: "shop", Name: "sticky-short", Protocol: v1.ProtocolTCP}
	if r := strings.Join(chainRules(rules, TableNAT, ServiceChainName(short)), "\n"); !strings.Contains(r, "--seconds 60 ") {
		t.Errorf("custom timeout missing:\n%s", r)
	}
	// A first connection (no affinity entry yet) still reaches every endpoint.
	tr := traceRules(t, Render(snap, defaultConfig()), flow{src: otherPod, dst: stickyVIP, proto: "tcp"})
	if got := tr.Endpoints(); len(got) != 3 {
		t.Errorf("first connection reaches %v", got)
	}
	if len(tr.Assumptions) == 0 {
		t.Error("the tracer did not say it assumed no affinity entry")
	}
}

func TestTerminatingEndpointsServeWhenNoneReady(t *testing.T) {
	tr := traceRules(t, Render(loadSnapshot(t, "terminating.yaml", "node-a"), defaultConfig()), flow{src: otherPod, dst: rollingVIP, proto: "tcp"})
	if got, want := tr.Endpoints(), []string{"10.244.1.30:8080"}; !reflect.DeepEqual(got, want) {
		t.Errorf("endpoints = %v, want %v", got, want)
	}
}

func TestReadyEndpointsWinOverTerminating(t *testing.T) {
	snap := loadSnapshot(t, "terminating.yaml", "node-a")
	n := ServicePortName{Namespace: "default", Name: "rolling", Port: "http", Protocol: v1.ProtocolTCP}
	snap.Endpoints[n] = append(snap.Endpoints[n], Endpoint{Addr: netip.MustParseAddr("10.244.1.33"), Port: 8080, Ready: true, Serving: true})
	tr := traceRules(t, Render(snap, defaultConfig()), flow{src: otherPod, dst: rollingVIP, proto: "tcp"})
	if got, want := tr.Endpoints(), []string{"10.244.1.33:8080"}; !reflect.DeepEqual(got, want) {
		t.Errorf("endpoints = %v, want %v", got, want)
	}
}

func TestSkippedObjectsAreNotProxied(t *testing.T) {
	snap := loadSnapshot(t, "skipped.yaml", "node-a")
	if len(snap.Services) != 1 {
		t.Errorf("services = %v, want only default/plain", snap.SortedNames())
	}
	// default/plain's only slices are FQDN and unlabelled: it has no endpoints.
	tr := traceRules(t, Render(snap, defaultConfig()), flow{src: otherPod, dst: "10.96.30.2:80", proto: "tcp"})
	if got := tr.Verdicts(); !reflect.DeepEqual(got, []string{"REJECT"}) {
		t.Errorf("default/plain: verdicts %v, want REJECT", got)
	}
	tr = traceRules(t, Render(snap, defaultConfig()), flow{src: otherPod, dst: "10.96.30.1:80", proto: "tcp"})
	if got := tr.Verdicts(); !reflect.DeepEqual(got, []string{"ACCEPT"}) || len(tr.Endpoints()) != 0 {
		t.Errorf("another proxy's Service was programmed: %v %v", got, tr.Endpoints())
	}
}

func TestProbabilitiesAreUniform(t *testing.T) {
	snap := loadSnapshot(t, "list.yaml", "node-a")
	n := ServicePortName{Namespace: "prod", Name: "api", Port: "grpc", Protocol: v1.ProtocolTCP}
	rules := chainRules(Render(snap, defaultConfig()), TableNAT, ServiceChainName(n))
	want := []string{"0.2500000000", "0.3333333333", "0.5000000000", ""}
	var got []string
	for _, r := range rules {
		if strings.Contains(r, "MARK-MASQ") {
			continue
		}
		p := ""
		if i := strings.Index(r, "--probability "); i >= 0 {
			p = strings.Fields(r[i:])[1]
		}
		got = append(got, p)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("probabilities = %q, want %q", got, want)
	}
}

func chainRules(r *Rules, table, chain string) []string {
	for _, c := range r.Table(table).Chains {
		if c.Name == chain {
			return c.Rules
		}
	}
	return nil
}

// Above LargeClusterEndpoints endpoints the per-endpoint rules lose their
// comments (as in kube-proxy's large cluster mode) and so does the
// masquerade check of the Service's chain, packets fare exactly as before,
// the dispatch rule keeps its comment, and the trace still names the
// Service.
func TestLargeClusterDropsCommentsBelowTheDispatchRule(t *testing.T) {
	build := func(services int) *Snapshot {
		snap := NewSnapshot()
		for i := 0; i < services; i++ {
			addService(snap, fmt.Sprintf("web%d", i), fmt.Sprintf("10.96.%d.%d", i/200, i%200+10), 10)
		}
		return snap
	}
	small, large := build(LargeClusterEndpoints/10), build(LargeClusterEndpoints/10+1)
	n := spn("web7", "http")
	vip := "10.96.0.17:80"
	commented := func(snap *Snapshot) (svcJumps, seps int) {
		rules := Render(snap, defaultConfig())
		for _, r := range chainRules(rules, TableNAT, ServiceChainName(n)) {
			if strings.Contains(r, "-j "+sepChainPrefix) && strings.Contains(r, "--comment") {
				svcJumps++
			}
		}
		for _, ep := range snap.Endpoints[n] {
			for _, r := range chainRules(rules, TableNAT, EndpointChainName(n, ep)) {
				if strings.Contains(r, "--comment") {
					seps++
				}
			}
		}
		return svcJumps, seps
	}
	if j, s := commented(small); j != 10 || s != 20 {
		t.Errorf("at %d endpoints: %d commented endpoint jumps, %d commented endpoint rules; want 10 and 20", LargeClusterEndpoints, j, s)
	}
	if j, s := commented(large); j != 0 || s != 0 {
		t.Errorf("above %d endpoints: %d commented endpoint jumps, %d commented endpoint rules; want none", LargeClusterEndpoints, j, s)
	}
	for _, r := range chainRules(Render(large, defaultConfig()), TableNAT, ServiceChainName(n)) {
		if strings.Contains(r, "--comment") {
			t.Errorf("above %d endpoints the Service chain still has a commented rule: %s", LargeClusterEndpoints, r)
		}
	}
	trSmall := traceRules(t, Render(small, defaultConfig()), flow{src: otherPod, dst: vip, proto: "tcp"})
	trLarge := traceRules(t, Render(large, defaultConfig()), flow{src: otherPod, dst: vip, proto: "tcp"})
	if !reflect.DeepEqual(trSmall.Endpoints(), trLarge.Endpoints()) || len(trLarge.Endpoints()) != 10 {
		t.Errorf("endpoints differ: %v and %v", trSmall.Endpoints(), trLarge.Endpoints())
	}
	if !strings.Contains(trLarge.Summary(), n.String()) {
		t.Errorf("the trace no longer names the Service:\n%s", trLarge.Summary())
	}
	// Hairpin: an endpoint reaching itself is still masqueraded.
	self := small.Endpoints[n][0].Addr
	for _, snap := range []*Snapshot{small, large} {
		hairpins := 0
		for _, o := range traceRules(t, Render(snap, defaultConfig()), flow{src: self, dst: vip, proto: "tcp"}).Outcomes {
			if o.DNAT == netip.AddrPortFrom(self, 8080).String() {
				hairpins++
				if !o.Masquerade {
					t.Errorf("hairpin to %s not masqueraded", self)
				}
			}
		}
		if hairpins != 1 {
			t.Errorf("%d outcomes send %s to itself, want 1", hairpins, self)
		}
	}
}
