package proxier

import (
	"context"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/pkg/conntrack"
	"github.com/switchyard-proxy/switchyard/pkg/iptables"
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func udpFlow(dst, replySrc string) conntrack.Flow {
	return conntrack.Flow{Protocol: unix.IPPROTO_UDP, OrigDst: ap(dst), ReplySrc: ap(replySrc)}
}

// dnsSnapshot has UDP Service kube-system/dns (10.96.0.53:53, NodePort
// 30053) with the given endpoint addresses on port 5353.
func dnsSnapshot(eps ...string) *Snapshot {
	snap := NewSnapshot()
	n := ServicePortName{Namespace: "kube-system", Name: "dns", Port: "dns", Protocol: v1.ProtocolUDP}
	snap.Services[n] = &ServicePort{Name: n, Port: 53, NodePort: 30053, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.53")},
		ExternalIPs: []netip.Addr{netip.MustParseAddr("203.0.113.53")}}
	for _, e := range eps {
		snap.Endpoints[n] = append(snap.Endpoints[n], Endpoint{Addr: netip.MustParseAddr(e), Port: 5353, Ready: true, Serving: true})
	}
	return snap
}

func remaining(ct *conntrack.Fake) map[conntrack.Flow]bool {
	out := map[conntrack.Flow]bool{}
	for _, f := range ct.Flows {
		out[f] = true
	}
	return out
}

func TestStaleUDPFlowsAcrossTransitions(t *testing.T) {
	ctx := context.Background()
	ct := &conntrack.Fake{}
	s := NewSyncer(defaultConfig(), iptables.NewFake())
	s.Conntrack = ct

	toA := udpFlow("10.96.0.53:53", "10.244.1.1:5353")
	toB := udpFlow("10.96.0.53:53", "10.244.1.2:5353")
	viaNodePort := udpFlow("192.168.50.10:30053", "10.244.1.1:5353")
	viaExternalIP := udpFlow("203.0.113.53:53", "10.244.1.1:5353")
	untranslated := udpFlow("10.96.0.53:53", "10.96.0.53:53") // made while there were no endpoints
	unrelated := udpFlow("8.8.8.8:53", "8.8.8.8:53")
	tcp := conntrack.Flow{Protocol: unix.IPPROTO_TCP, OrigDst: ap("10.96.0.53:53"), ReplySrc: ap("10.244.9.9:5353")}

	step := func(name string, snap *Snapshot, flows []conntrack.Flow, wantKept ...conntrack.Flow) {
		t.Helper()
		ct.Flows = flows
		if _, err := s.Sync(ctx, snap); err != nil {
			t.Fatal(err)
		}
		got := remaining(ct)
		want := map[conntrack.Flow]bool{}
		for _, f := range wantKept {
			want[f] = true
		}
		for f := range want {
			if !got[f] {
				t.Errorf("%s: flow %v was deleted", name, f)
			}
		}
		for f := range got {
			if !want[f] {
				t.Errorf("%s: flow %v was kept", name, f)
			}
		}
	}
	all := []conntrack.Flow{toA, toB, viaNodePort, viaExternalIP, untranslated, unrelated, tcp}

	// A serves: flows to A stay; flows to B (gone) and untranslated go.
	step("endpoint A", dnsSnapshot("10.244.1.1"), all, toA, viaNodePort, viaExternalIP, unrelated, tcp)
	// A replaced by B (kubernetes#19029): A's flows go on every frontend.
	step("A replaced by B", dnsSnapshot("10.244.1.2"), all, toB, unrelated, tcp)
	// Scaled to zero (kubernetes#139628): every translated flow goes.
	step("zero endpoints", dnsSnapshot(), all, unrelated, tcp)
	// Back to one (kubernetes#48370): the untranslated flow goes.
	step("back to A", dnsSnapshot("10.244.1.1"), all, toA, viaNodePort, viaExternalIP, unrelated, tcp)
	// The Service is deleted (kubernetes#141371): its flows go once.
	step("service deleted", NewSnapshot(), all, unrelated, tcp)
	// ...once: afterwards the address is not ours and its flows are left alone.
	step("after deletion", NewSnapshot(), all, all...)

	// A restarted proxy (fresh syncer) keeps flows to current endpoints
	// (kubernetes#122740).
	fresh := NewSyncer(defaultConfig(), iptables.NewFake())
	fresh.Conntrack = ct
	ct.Flows = []conntrack.Flow{toA, viaNodePort}
	if _, err := fresh.Sync(ctx, dnsSnapshot("10.244.1.1")); err != nil {
		t.Fatal(err)
	}
	if len(ct.Flows) != 2 {
		t.Errorf("a restart deleted live flows: left %v", ct.Flows)
	}
}

// The conntrack table is listed only when a flow can have become stale: a
// sync that changes nothing UDP does not pay for a table that may hold
// hundreds of thousands of entries; a removed endpoint, a new frontend, a
// full sync and a failed clean-up do.
func TestConntrackListedOnlyWhenFlowsCanBeStale(t *testing.T) {
	ctx := context.Background()
	ct := &conntrack.Fake{}
	s := NewSyncer(defaultConfig(), iptables.NewFake())
	s.Conntrack = ct
	withTCP := func(snap *Snapshot) *Snapshot {
		addService(snap, "web", "10.96.0.10", 2) // TCP changes never list
		return snap
	}
	sync := func(snap *Snapshot) {
		t.Helper()
		if _, err := s.Sync(ctx, snap); err != nil {
			t.Fatal(err)
		}
	}
	for _, step := range []struct {
		name   string
		snap   *Snapshot
		listed bool
	}{
		{"first (full) sync", withTCP(dnsSnapshot("10.244.1.1")), true},
		{"nothing UDP changed", dnsSnapshot("10.244.1.1"), false},
		{"an endpoint added", dnsSnapshot("10.244.1.1", "10.244.1.2"), false},
		{"an endpoint removed", dnsSnapshot("10.244.1.2"), true},
		{"to zero endpoints", dnsSnapshot(), true},
		{"still zero", dnsSnapshot(), false},
		{"first endpoint again", dnsSnapshot("10.244.1.3"), true},
		{"service deleted", NewSnapshot(), true},
		{"no UDP at all", withTCP(NewSnapshot()), false},
	} {
		before := ct.Listings
		sync(step.snap)
		if listed := ct.Listings > before; listed != step.listed {
			t.Errorf("%s: conntrack listed %v, want %v", step.name, listed, step.listed)
		}
	}
	s.ForceFull()
	before := ct.Listings
	sync(dnsSnapshot("10.244.1.3"))
	if ct.Listings == before {
		t.Error("a full sync did not list the table")
	}
}
