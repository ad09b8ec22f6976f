package proxier

import (
	"net/netip"
	"strings"
	"testing"
)

// Sources for external-traffic tests: an external client inside the LB
// source ranges, one outside them, a pod, and the node itself.
var (
	extClient     = netip.MustParseAddr("172.16.0.9")
	blockedClient = netip.MustParseAddr("172.17.0.9")
	aPod          = netip.MustParseAddr("10.244.3.9")
	theNode       = nodeIP
	lbIP          = netip.MustParseAddr("198.51.100.10")
)

func externalRules(t *testing.T, mutate func(*RenderConfig)) *Rules {
	cfg := defaultConfig()
	if mutate != nil {
		mutate(&cfg)
	}
	return Render(loadSnapshot(t, "external.yaml", "node-a"), cfg)
}

var npEPs = []string{"10.244.1.5:8080", "10.244.2.7:8080"}

func TestNodePortClusterPolicy(t *testing.T) {
	r := externalRules(t, nil)
	for _, src := range []netip.Addr{extClient, aPod, theNode} {
		runFlows(t, r, []flow{
			{src: src, dst: "192.168.50.10:30080", proto: "tcp", want: want{endpoints: npEPs, masq: yes, verdict: "ACCEPT"}},
		})
	}
	runFlows(t, r, []flow{
		{src: extClient, dst: "192.168.50.10:30053", proto: "udp", want: want{endpoints: []string{"10.244.1.5:5353", "10.244.2.7:5353"}, masq: yes, verdict: "ACCEPT"}},
		{src: extClient, dst: "192.168.50.10:30132", proto: "sctp", want: want{endpoints: []string{"10.244.1.5:7777", "10.244.2.7:7777"}, masq: yes, verdict: "ACCEPT"}},
		// Wrong protocol or port: not a NodePort.
		{src: extClient, dst: "192.168.50.10:30080", proto: "udp", want: want{verdict: "ACCEPT"}},
		{src: extClient, dst: "192.168.50.10:30079", proto: "tcp", want: want{verdict: "ACCEPT"}},
		// A NodePort is only on local addresses.
		{src: extClient, dst: "192.168.50.99:30080", proto: "tcp", want: want{verdict: "ACCEPT"}},
	})
}

func TestLocalhostNodePorts(t *testing.T) {
	r := externalRules(t, nil)
	runFlows(t, r, []flow{
		{src: theNode, dst: "127.0.0.1:30080", proto: "tcp", want: want{endpoints: npEPs, masq: yes, verdict: "ACCEPT"}},
	})
	// The martian guard: from outside, 127.0.0.1 is dropped.
	text := RestoreText(r)
	if !strings.Contains(text, "-A SWY-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8") {
		t.Errorf("no martian guard with localhost NodePorts")
	}
	off := externalRules(t, func(c *RenderConfig) { c.LocalhostNodePorts = false })
	runFlows(t, off, []flow{
		{src: theNode, dst: "127.0.0.1:30080", proto: "tcp", want: want{verdict: "ACCEPT"}},
	})
	if strings.Contains(RestoreText(off), "block incoming localnet") {
		t.Error("martian guard without localhost NodePorts")
	}
}

func TestNodePortAddresses(t *testing.T) {
	other := netip.MustParseAddr("10.0.0.1") // another local address
	snap := loadSnapshot(t, "external.yaml", "node-a")
	snap.HostAddrs = append(snap.HostAddrs, other)
	cfg := defaultConfig()
	cfg.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("192.168.50.0/24")}
	r := Render(snap, cfg)
	runFlows(t, r, []flow{
		{src: extClient, dst: "192.168.50.10:30080", proto: "tcp", local: []netip.Addr{other}, want: want{endpoints: npEPs, verdict: "ACCEPT"}},
		{src: extClient, dst: "10.0.0.1:30080", proto: "tcp", local: []netip.Addr{other}, want: want{verdict: "ACCEPT"}},
		{src: theNode, dst: "127.0.0.1:30080", proto: "tcp", local: []netip.Addr{other}, want: want{verdict: "ACCEPT"}},
	})
	if cfg.LocalhostNodePortsActive() {
		t.Error("localhost NodePorts active although --nodeport-addresses excludes loopback")
	}

	cfg.NodePortAddresses = nil
	cfg.NodePortPrimary = true
	r = Render(snap, cfg)
	runFlows(t, r, []flow{
		{src: extClient, dst: "192.168.50.10:30080", proto: "tcp", local: []netip.Addr{other}, want: want{endpoints: npEPs, verdict: "ACCEPT"}},
		{src: extClient, dst: "10.0.0.1:30080", proto: "tcp", local: []netip.Addr{other}, want: want{verdict: "ACCEPT"}},
	})

	// --bind-address overrides the primary IP.
	cfg.PrimaryIPOverride = other
	r = Render(snap, cfg)
	runFlows(t, r, []flow{
		{src: extClient, dst: "10.0.0.1:30080", proto: "tcp", local: []netip.Addr{other}, want: want{endpoints: npEPs, verdict: "ACCEPT"}},
		{src: extClient, dst: "192.168.50.10:30080", proto: "tcp", local: []netip.Addr{other}, want: want{verdict: "ACCEPT"}},
	})
	cfg.PrimaryIPOverride = netip.Addr{}

	cfg.NodePortPrimary = false
	cfg.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8")}
	r = Render(snap, cfg)
	runFlows(t, r, []flow{
		{src: theNode, dst: "127.0.0.1:30080", proto: "tcp", local: []netip.Addr{other}, want: want{endpoints: npEPs, verdict: "ACCEPT"}},
		{src: extClient, dst: "10.0.0.1:30080", proto: "tcp", local: []netip.Addr{other}, want: want{endpoints: npEPs, verdict: "ACCEPT"}},
		{src: extClient, dst: "192.168.50.10:30080", proto: "tcp", local: []netip.Addr{other}, want: want{verdict: "ACCEPT"}},
	})
}

// With kube-proxy's nfacct counters, localhost NodePort packets and INVALID
// drops are counted on the way; the packets' fates stay the same.
func TestNFAcctCountersKeepFates(t *testing.T) {
	snap := loadSnapshot(t, "external.yaml", "node-a")
	cfg := defaultConfig()
	cfg.NFAcctInvalid, cfg.NFAcctLocalhost = true, true
	r := Render(snap, cfg)
	runFlows(t, r, []flow{
		{src: theNode, dst: "127.0.0.1:30080", proto: "tcp", want: want{endpoints: npEPs, verdict: "ACCEPT"}},
		{src: extClient, dst: "192.168.50.10:30080", proto: "tcp", want: want{endpoints: npEPs, verdict: "ACCEPT"}},
	})
	text := RestoreText(r)
	for _, want := range []string{"--ctstate INVALID -m nfacct --nfacct-name " + NFAcctInvalidDropped + " -j DROP",
		"-d 127.0.0.0/8 -m nfacct --nfacct-name " + NFAcctLocalhostNodePorts} {
		if !strings.Contains(text, want) {
			t.Errorf("rules lack %q", want)
		}
	}
}

func TestExternalTrafficPolicyLocal(t *testing.T) {
	r := externalRules(t, nil)
	// External clients reach only the local endpoint, and keep their address.
	runFlows(t, r, []flow{
		{src: extClient, dst: "192.168.50.10:30081", proto: "tcp", want: want{endpoints: []string{"10.244.1.6:8080"}, masq: no, verdict: "ACCEPT"}},
		// Pods are short-circuited to every endpoint, unmasqueraded.
		{src: aPod, dst: "192.168.50.10:30081", proto: "tcp", want: want{endpoints: []string{"10.244.1.6:8080", "10.244.2.8:8080"}, masq: no, verdict: "ACCEPT"}},
		// The node itself is masqueraded and sent to every endpoint.
		{src: theNode, dst: "192.168.50.10:30081", proto: "tcp", want: want{endpoints: []string{"10.244.1.6:8080", "10.244.2.8:8080"}, masq: yes, verdict: "ACCEPT"}},
	})
}

func TestExternalTrafficPolicyLocalWithoutLocalEndpoints(t *testing.T) {
	r := externalRules(t, nil)
	runFlows(t, r, []flow{
		{src: extClient, dst: "192.168.50.10:30082", proto: "tcp", want: want{verdict: "DROP", why: "ext/remote-only:http has no local endpoints"}},
		// Pods and the node still reach the remote endpoint.
		{src: aPod, dst: "192.168.50.10:30082", proto: "tcp", want: want{endpoints: []string{"10.244.2.9:8080"}, verdict: "ACCEPT"}},
		{src: theNode, dst: "192.168.50.10:30082", proto: "tcp", want: want{endpoints: []string{"10.244.2.9:8080"}, masq: yes, verdict: "ACCEPT"}},
		// The cluster IP is unaffected by the external policy.
		{src: aPod, dst: "10.96.50.3:80", proto: "tcp", want: want{endpoints: []string{"10.244.2.9:8080"}, verdict: "ACCEPT"}},
	})
}

func TestNoEndpointsRejectsEverywhere(t *testing.T) {
	r := externalRules(t, nil)
	for _, dst := range []string{"192.168.50.10:30083", "203.0.113.11:80", "10.96.50.4:80"} {
		for _, src := range []netip.Addr{extClient, aPod} {
			runFlows(t, r, []flow{
				{src: src, dst: dst, proto: "tcp", want: want{verdict: "REJECT", why: "ext/empty:http has no endpoints"}},
			})
		}
	}
}

func TestExternalIPs(t *testing.T) {
	r := externalRules(t, nil)
	eps := []string{"10.244.1.10:8080", "10.244.2.10:8080"}
	runFlows(t, r, []flow{
		{src: extClient, dst: "203.0.113.10:80", proto: "tcp", want: want{endpoints: eps, masq: yes, verdict: "ACCEPT"}},
		{src: aPod, dst: "203.0.113.10:80", proto: "tcp", want: want{endpoints: eps, masq: yes, verdict: "ACCEPT"}},
		{src: theNode, dst: "203.0.113.10:80", proto: "tcp", want: want{endpoints: eps, masq: yes, verdict: "ACCEPT"}},
		{src: extClient, dst: "203.0.113.10:81", proto: "tcp", want: want{verdict: "ACCEPT"}},
	})
	if strings.Contains(RestoreText(r), "2001:db8::10") {
		t.Error("an IPv6 externalIP leaked into IPv4 rules")
	}
}

func TestLoadBalancerSourceRanges(t *testing.T) {
	r := externalRules(t, nil)
	local := []string{"10.244.1.20:8080"}
	all := []string{"10.244.1.20:8080", "10.244.2.20:8080"}
	dst := "198.51.100.10:80"
	// In range: reaches the local endpoint (externalTrafficPolicy Local), unmasqueraded.
	runFlows(t, r, []flow{
		{src: extClient, dst: dst, proto: "tcp", want: want{endpoints: local, masq: no, verdict: "ACCEPT"}},
		// Out of range: dropped by the firewall.
		{src: blockedClient, dst: dst, proto: "tcp", want: want{verdict: "DROP", why: "traffic not accepted by " + FirewallChainName(ServicePortName{Namespace: "ext", Name: "lb", Port: "http", Protocol: "TCP"})}},
		// The NodePort is not restricted by the ranges.
		{src: blockedClient, dst: "192.168.50.10:30090", proto: "tcp", want: want{endpoints: local, masq: no, verdict: "ACCEPT"}},
		// The node (its address is in a range) reaches every endpoint, masqueraded.
		{src: theNode, dst: dst, proto: "tcp", want: want{endpoints: all, masq: yes, verdict: "ACCEPT"}},
		// The LB IP as source (a VIP local to the node) is allowed because a
		// range covers the node.
		{src: lbIP, dst: dst, proto: "tcp", local: []netip.Addr{lbIP}, want: want{endpoints: all, masq: yes, verdict: "ACCEPT"}},
		// ipMode Proxy is left to the load balancer.
		{src: extClient, dst: "198.51.100.11:80", proto: "tcp", want: want{verdict: "ACCEPT"}},
	})
}

func TestLoadBalancerWithoutNodePorts(t *testing.T) {
	r := externalRules(t, nil)
	runFlows(t, r, []flow{
		{src: blockedClient, dst: "198.51.100.20:80", proto: "tcp", want: want{endpoints: []string{"10.244.2.30:8080"}, masq: yes, verdict: "ACCEPT"}},
	})
	if strings.Contains(strings.Join(chainRules(r, TableNAT, ChainNodePorts), "\n"), "lb-no-nodeports") {
		t.Error("NodePort rules for a Service with allocateLoadBalancerNodePorts false")
	}
}

func TestHealthCheckNodePortAccepted(t *testing.T) {
	tr := traceRules(t, externalRules(t, nil), flow{src: extClient, dst: netip.AddrPortFrom(theNode, 32000).String()})
	accepted := false
	for _, o := range tr.Outcomes {
		for _, s := range o.Path {
			if s.Chain == ChainNodePorts && s.Table == TableFilter && strings.Contains(s.Comment, "health check node port") {
				accepted = o.Verdict == "ACCEPT"
			}
		}
	}
	if !accepted {
		t.Errorf("health check node port not accepted by the filter table:\n%s", tr.Text())
	}
}
