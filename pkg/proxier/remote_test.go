package proxier

import (
	"net/netip"
	"strings"
	"testing"
)

// A remote endpoint is one rule in its Service's chain (probability, DNAT,
// with affinity the recent check and set); every endpoint that is, or may
// be, on this node keeps its SEP chain with the hairpin mark.
func TestRemoteEndpointsAreOneRule(t *testing.T) {
	snap := loadSnapshot(t, "remote.yaml", "node-a")
	text := RestoreText(Render(snap, defaultConfig()))
	name := ServicePortName{Namespace: "shop", Name: "mixed", Port: "web", Protocol: "TCP"}
	for _, tc := range []struct {
		addr  string
		chain bool
	}{
		{"10.244.1.5", true}, {"10.244.2.5", false}, {"10.244.1.6", true},
		{"10.244.3.7", true}, {"10.244.1.8", true}, {"192.168.50.10", true},
	} {
		ep := Endpoint{Addr: netip.MustParseAddr(tc.addr), Port: 8080}
		sep := EndpointChainName(name, ep)
		if has := strings.Contains(text, ":"+sep+" "); has != tc.chain {
			t.Errorf("%s: SEP chain present %v, want %v", tc.addr, has, tc.chain)
		}
	}
	remote := EndpointChainName(name, Endpoint{Addr: netip.MustParseAddr("10.244.2.5"), Port: 8080})
	for _, want := range []string{
		"-m recent --name " + remote + " --rcheck --seconds 10800 --reap -m recent --name " + remote + " --set -j DNAT --to-destination 10.244.2.5:8080",
		"--probability 0.3333333333 -m recent --name " + remote + " --set -j DNAT --to-destination 10.244.2.5:8080",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the remote endpoint's rules lack %q:\n%s", want, text)
		}
	}
}

// The packets' fates are those of the chain-per-endpoint layout: every
// endpoint is reachable through the cluster IP and the NodePort, a pod
// reaching itself through its Service is masqueraded (local endpoints keep
// their hairpin mark), other pod traffic to the cluster IP is not, and
// NodePort traffic to the remote endpoint is.
func TestRemoteEndpointsKeepFates(t *testing.T) {
	snap := loadSnapshot(t, "remote.yaml", "node-a")
	cfg := defaultConfig()
	all := []string{"10.244.1.5:8080", "10.244.1.6:8080", "10.244.1.8:8080", "10.244.2.5:8080", "10.244.3.7:8080", "192.168.50.10:8080"}
	vip := "10.96.20.1:80"
	for _, src := range []string{"10.244.1.5", "10.244.1.6", "10.244.1.50"} {
		tr := traceRules(t, Render(snap, cfg), flow{src: netip.MustParseAddr(src), dst: vip, proto: "tcp"})
		if got := strings.Join(tr.Endpoints(), " "); got != strings.Join(all, " ") {
			t.Errorf("from %s: endpoints %s, want %s", src, got, strings.Join(all, " "))
		}
		for _, o := range tr.Outcomes {
			self := strings.HasPrefix(o.DNAT, src+":")
			if o.Masquerade != self {
				t.Errorf("from %s to %s: masquerade %v, want %v\n%s", src, o.DNAT, o.Masquerade, self, tr.Text())
			}
		}
		if len(tr.Outcomes) == 0 {
			t.Fatalf("from %s: no outcome", src)
		}
	}
	r := Render(snap, cfg)
	runFlows(t, r, []flow{
		{src: extClient, dst: "192.168.50.10:30200", proto: "tcp", want: want{endpoints: all, verdict: "ACCEPT"}},
	})
	tr := traceRules(t, Render(snap, cfg), flow{src: extClient, dst: "192.168.50.10:30200", proto: "tcp"})
	for _, o := range tr.Outcomes {
		if o.DNAT == "10.244.2.5:8080" && !o.Masquerade {
			t.Errorf("NodePort traffic to the remote endpoint was not masqueraded:\n%s", tr.Text())
		}
	}
}

// With externalTrafficPolicy Local a pod of another node reaching itself
// through this node's NodePort is short-circuited to the cluster-wide chain
// unmasqueraded by the policy: its endpoint's hairpin mark must be there.
func TestRemotePodHairpinThroughLocalPolicyNodePort(t *testing.T) {
	snap := loadSnapshot(t, "remote.yaml", "node-a")
	tr := traceRules(t, Render(snap, defaultConfig()), flow{src: netip.MustParseAddr("10.244.2.5"), dst: "192.168.50.10:30201", proto: "tcp"})
	seen := false
	for _, o := range tr.Outcomes {
		if o.DNAT == "10.244.2.5:8080" {
			seen = true
			if !o.Masquerade {
				t.Errorf("a remote pod reaching itself through a Local-policy NodePort was not masqueraded:\n%s", tr.Text())
			}
		}
	}
	if !seen {
		t.Fatalf("the remote pod is not among the endpoints:\n%s", tr.Text())
	}
}
