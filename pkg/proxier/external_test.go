package proxier

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
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

// want is the expected fate of a traced packet.
type want struct {
	endpoints []string // DNAT destinations (nil: none)
	masq      *bool    // nil: don't care
	verdict   string   // single verdict across outcomes
	why       string   // substring of the summary
}

var yes, no = ptrTo(true), ptrTo(false)

func ptrTo(b bool) *bool { return &b }

// traceExt traces from src to dst with the node's addresses (plus extra
// local addresses) and checks the result.
func traceExt(t *testing.T, rules *Rules, src netip.Addr, dst, proto string, w want, extraLocal ...netip.Addr) {
	t.Helper()
	rs, err := iptables.ParseSave(RestoreText(rules))
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort(dst)
	tr := iptables.TracePacket(rs, iptables.TraceInput{
		Packet:     iptables.Packet{Src: src, Dst: ap.Addr(), DstPort: int(ap.Port()), SrcPort: 40000, Protocol: proto},
		LocalAddrs: append([]netip.Addr{theNode}, extraLocal...),
	})
	where := src.String() + " -> " + proto + " " + dst
	if got := tr.Endpoints(); !reflect.DeepEqual(got, w.endpoints) {
		t.Errorf("%s: endpoints %v, want %v\n%s", where, got, w.endpoints, tr.Text())
	}
	if got := tr.Verdicts(); !reflect.DeepEqual(got, []string{w.verdict}) {
		t.Errorf("%s: verdicts %v, want %s\n%s", where, got, w.verdict, tr.Text())
	}
	if w.masq != nil {
		all, none := masqueraded(tr)
		if *w.masq && !all || !*w.masq && !none {
			t.Errorf("%s: masquerade all=%v none=%v, want %v\n%s", where, all, none, *w.masq, tr.Text())
		}
	}
	if w.why != "" && !strings.Contains(tr.Summary(), w.why) {
		t.Errorf("%s: summary %q does not say %q", where, tr.Summary(), w.why)
	}
}

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
		traceExt(t, r, src, "192.168.50.10:30080", "tcp", want{endpoints: npEPs, masq: yes, verdict: "ACCEPT"})
	}
	traceExt(t, r, extClient, "192.168.50.10:30053", "udp", want{endpoints: []string{"10.244.1.5:5353", "10.244.2.7:5353"}, masq: yes, verdict: "ACCEPT"})
	traceExt(t, r, extClient, "192.168.50.10:30132", "sctp", want{endpoints: []string{"10.244.1.5:7777", "10.244.2.7:7777"}, masq: yes, verdict: "ACCEPT"})
	// Wrong protocol or port: not a NodePort.
	traceExt(t, r, extClient, "192.168.50.10:30080", "udp", want{verdict: "ACCEPT"})
	traceExt(t, r, extClient, "192.168.50.10:30079", "tcp", want{verdict: "ACCEPT"})
	// A NodePort is only on local addresses.
	traceExt(t, r, extClient, "192.168.50.99:30080", "tcp", want{verdict: "ACCEPT"})
}

func TestLocalhostNodePorts(t *testing.T) {
	r := externalRules(t, nil)
	traceExt(t, r, theNode, "127.0.0.1:30080", "tcp", want{endpoints: npEPs, masq: yes, verdict: "ACCEPT"})
	// The martian guard: from outside, 127.0.0.1 is dropped.
	text := RestoreText(r)
	if !strings.Contains(text, "-A SWY-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8") {
		t.Errorf("no martian guard with localhost NodePorts")
	}
	off := externalRules(t, func(c *RenderConfig) { c.LocalhostNodePorts = false })
	traceExt(t, off, theNode, "127.0.0.1:30080", "tcp", want{verdict: "ACCEPT"})
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
	traceExt(t, r, extClient, "192.168.50.10:30080", "tcp", want{endpoints: npEPs, verdict: "ACCEPT"}, other)
	traceExt(t, r, extClient, "10.0.0.1:30080", "tcp", want{verdict: "ACCEPT"}, other)
	traceExt(t, r, theNode, "127.0.0.1:30080", "tcp", want{verdict: "ACCEPT"}, other)
	if cfg.LocalhostNodePortsActive() {
		t.Error("localhost NodePorts active although --nodeport-addresses excludes loopback")
	}

	cfg.NodePortAddresses = nil
	cfg.NodePortPrimary = true
	r = Render(snap, cfg)
	traceExt(t, r, extClient, "192.168.50.10:30080", "tcp", want{endpoints: npEPs, verdict: "ACCEPT"}, other)
	traceExt(t, r, extClient, "10.0.0.1:30080", "tcp", want{verdict: "ACCEPT"}, other)

	// --bind-address overrides the primary IP.
	cfg.PrimaryIPOverride = other
	r = Render(snap, cfg)
	traceExt(t, r, extClient, "10.0.0.1:30080", "tcp", want{endpoints: npEPs, verdict: "ACCEPT"}, other)
	traceExt(t, r, extClient, "192.168.50.10:30080", "tcp", want{verdict: "ACCEPT"}, other)
	cfg.PrimaryIPOverride = netip.Addr{}

	cfg.NodePortPrimary = false
	cfg.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8")}
	r = Render(snap, cfg)
	traceExt(t, r, theNode, "127.0.0.1:30080", "tcp", want{endpoints: npEPs, verdict: "ACCEPT"}, other)
	traceExt(t, r, extClient, "10.0.0.1:30080", "tcp", want{endpoints: npEPs, verdict: "ACCEPT"}, other)
	traceExt(t, r, extClient, "192.168.50.10:30080", "tcp", want{verdict: "ACCEPT"}, other)
}

// With kube-proxy's nfacct counters, localhost NodePort packets and INVALID
// drops are counted on the way; the packets' fates stay the same.
func TestNFAcctCountersKeepFates(t *testing.T) {
	snap := loadSnapshot(t, "external.yaml", "node-a")
	cfg := defaultConfig()
	cfg.NFAcctInvalid, cfg.NFAcctLocalhost = true, true
	r := Render(snap, cfg)
	traceExt(t, r, theNode, "127.0.0.1:30080", "tcp", want{endpoints: npEPs, verdict: "ACCEPT"})
	traceExt(t, r, extClient, "192.168.50.10:30080", "tcp", want{endpoints: npEPs, verdict: "ACCEPT"})
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
	traceExt(t, r, extClient, "192.168.50.10:30081", "tcp", want{endpoints: []string{"10.244.1.6:8080"}, masq: no, verdict: "ACCEPT"})
	// Pods are short-circuited to every endpoint, unmasqueraded.
	traceExt(t, r, aPod, "192.168.50.10:30081", "tcp", want{endpoints: []string{"10.244.1.6:8080", "10.244.2.8:8080"}, masq: no, verdict: "ACCEPT"})
	// The node itself is masqueraded and sent to every endpoint.
	traceExt(t, r, theNode, "192.168.50.10:30081", "tcp", want{endpoints: []string{"10.244.1.6:8080", "10.244.2.8:8080"}, masq: yes, verdict: "ACCEPT"})
}

func TestExternalTrafficPolicyLocalWithoutLocalEndpoints(t *testing.T) {
	r := externalRules(t, nil)
	traceExt(t, r, extClient, "192.168.50.10:30082", "tcp", want{verdict: "DROP", why: "ext/remote-only:http has no local endpoints"})
	// Pods and the node still reach the remote endpoint.
	traceExt(t, r, aPod, "192.168.50.10:30082", "tcp", want{endpoints: []string{"10.244.2.9:8080"}, verdict: "ACCEPT"})
	traceExt(t, r, theNode, "192.168.50.10:30082", "tcp", want{endpoints: []string{"10.244.2.9:8080"}, masq: yes, verdict: "ACCEPT"})
	// The cluster IP is unaffected by the external policy.
	traceExt(t, r, aPod, "10.96.50.3:80", "tcp", want{endpoints: []string{"10.244.2.9:8080"}, verdict: "ACCEPT"})
}

func TestNoEndpointsRejectsEverywhere(t *testing.T) {
	r := externalRules(t, nil)
	for _, dst := range []string{"192.168.50.10:30083", "203.0.113.11:80", "10.96.50.4:80"} {
		for _, src := range []netip.Addr{extClient, aPod} {
			traceExt(t, r, src, dst, "tcp", want{verdict: "REJECT", why: "ext/empty:http has no endpoints"})
		}
	}
}

func TestExternalIPs(t *testing.T) {
	r := externalRules(t, nil)
	eps := []string{"10.244.1.10:8080", "10.244.2.10:8080"}
	traceExt(t, r, extClient, "203.0.113.10:80", "tcp", want{endpoints: eps, masq: yes, verdict: "ACCEPT"})
	traceExt(t, r, aPod, "203.0.113.10:80", "tcp", want{endpoints: eps, masq: yes, verdict: "ACCEPT"})
	traceExt(t, r, theNode, "203.0.113.10:80", "tcp", want{endpoints: eps, masq: yes, verdict: "ACCEPT"})
	traceExt(t, r, extClient, "203.0.113.10:81", "tcp", want{verdict: "ACCEPT"})
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
	traceExt(t, r, extClient, dst, "tcp", want{endpoints: local, masq: no, verdict: "ACCEPT"})
	// Out of range: dropped by the firewall.
	traceExt(t, r, blockedClient, dst, "tcp", want{verdict: "DROP", why: "traffic not accepted by " + FirewallChainName(ServicePortName{Namespace: "ext", Name: "lb", Port: "http", Protocol: "TCP"})})
	// The NodePort is not restricted by the ranges.
	traceExt(t, r, blockedClient, "192.168.50.10:30090", "tcp", want{endpoints: local, masq: no, verdict: "ACCEPT"})
	// The node (its address is in a range) reaches every endpoint, masqueraded.
	traceExt(t, r, theNode, dst, "tcp", want{endpoints: all, masq: yes, verdict: "ACCEPT"})
	// The LB IP as source (a VIP local to the node) is allowed because a
	// range covers the node.
	traceExt(t, r, lbIP, dst, "tcp", want{endpoints: all, masq: yes, verdict: "ACCEPT"}, lbIP)
	// ipMode Proxy is left to the load balancer.
	traceExt(t, r, extClient, "198.51.100.11:80", "tcp", want{verdict: "ACCEPT"})
}

func TestLoadBalancerWithoutNodePorts(t *testing.T) {
	r := externalRules(t, nil)
	traceExt(t, r, blockedClient, "198.51.100.20:80", "tcp", want{endpoints: []string{"10.244.2.30:8080"}, masq: yes, verdict: "ACCEPT"})
	if strings.Contains(strings.Join(chainRules(r, TableNAT, ChainNodePorts), "\n"), "lb-no-nodeports") {
		t.Error("NodePort rules for a Service with allocateLoadBalancerNodePorts false")
	}
}

func TestHealthCheckNodePortAccepted(t *testing.T) {
	r := externalRules(t, nil)
	rs, err := iptables.ParseSave(RestoreText(r))
	if err != nil {
		t.Fatal(err)
	}
	tr := iptables.TracePacket(rs, iptables.TraceInput{
		Packet:     iptables.Packet{Src: extClient, Dst: theNode, DstPort: 32000, SrcPort: 40000, Protocol: "tcp"},
		LocalAddrs: []netip.Addr{theNode},
	})
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
