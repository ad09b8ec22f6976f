package proxier

import (
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// TestPlanServicePort table-tests the per-port decision: which chains a
// Service port gets, where cluster IP and external traffic go, and what is
// dropped or rejected, from the Service's shape and its endpoints.
func TestPlanServicePort(t *testing.T) {
	name := ServicePortName{Namespace: "ns", Name: "web", Port: "http", Protocol: v1.ProtocolTCP}
	svcChain, svlChain := ServiceChainName(name), LocalChainName(name)
	noEndpoints := trafficPlan{verdict: "REJECT", why: "ns/web:http has no endpoints"}
	noLocal := trafficPlan{verdict: "DROP", why: "ns/web:http has no local endpoints"}
	ep := func(ip, node string, ready, terminating bool) Endpoint {
		return Endpoint{Addr: netip.MustParseAddr(ip), Port: 8080, Ready: ready, Serving: true, Terminating: terminating, NodeName: node}
	}
	local, remote := ep("10.244.1.5", "node-a", true, false), ep("10.244.2.5", "node-b", true, false)
	lbIP := []netip.Addr{netip.MustParseAddr("192.0.2.10")}
	ranges := []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}

	for _, tc := range []struct {
		name string
		svc  ServicePort
		eps  []Endpoint
		// want: the plan's traffic fates, and which chains exist.
		internal, external                trafficPlan
		clusterChain, localChain, ext, fw bool
	}{
		{name: "cluster IP with endpoints", eps: []Endpoint{local, remote},
			internal: trafficPlan{chain: svcChain}, external: trafficPlan{chain: svcChain}, clusterChain: true},
		{name: "no endpoints rejects", internal: noEndpoints, external: noEndpoints},
		{name: "only terminating endpoints are used", eps: []Endpoint{ep("10.244.2.6", "node-b", false, true)},
			internal: trafficPlan{chain: svcChain}, external: trafficPlan{chain: svcChain}, clusterChain: true},
		{name: "internal Local with a local endpoint", svc: ServicePort{InternalPolicyLocal: true}, eps: []Endpoint{local, remote},
			internal: trafficPlan{chain: svlChain}, external: trafficPlan{chain: svcChain}, localChain: true},
		{name: "internal Local without a local endpoint drops", svc: ServicePort{InternalPolicyLocal: true}, eps: []Endpoint{remote},
			internal: noLocal, external: trafficPlan{chain: svcChain}},
		{name: "NodePort external Local without a local endpoint", svc: ServicePort{NodePort: 30080, ExternalPolicyLocal: true}, eps: []Endpoint{remote},
			internal: trafficPlan{chain: svcChain}, external: noLocal, clusterChain: true, ext: true},
		{name: "NodePort external Local with a local endpoint", svc: ServicePort{NodePort: 30080, ExternalPolicyLocal: true}, eps: []Endpoint{local, remote},
			internal: trafficPlan{chain: svcChain}, external: trafficPlan{chain: svlChain}, clusterChain: true, localChain: true, ext: true},
		{name: "external Local without external access is Cluster", svc: ServicePort{ExternalPolicyLocal: true}, eps: []Endpoint{remote},
			internal: trafficPlan{chain: svcChain}, external: trafficPlan{chain: svcChain}, clusterChain: true},
		{name: "load balancer with source ranges", svc: ServicePort{LoadBalancerIPs: lbIP, LoadBalancerSourceRanges: ranges}, eps: []Endpoint{remote},
			internal: trafficPlan{chain: svcChain}, external: trafficPlan{chain: svcChain}, clusterChain: true, ext: true, fw: true},
		{name: "load balancer with source ranges and no endpoints", svc: ServicePort{LoadBalancerIPs: lbIP, LoadBalancerSourceRanges: ranges},
			internal: noEndpoints, external: noEndpoints},
		{name: "both policies Local, endpoints elsewhere", svc: ServicePort{NodePort: 30080, InternalPolicyLocal: true, ExternalPolicyLocal: true}, eps: []Endpoint{remote},
			internal: noLocal, external: noLocal, clusterChain: true, ext: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc := tc.svc
			svc.Name, svc.Port, svc.ClusterIPs = name, 80, []netip.Addr{netip.MustParseAddr("10.96.0.10")}
			snap := &Snapshot{Services: map[ServicePortName]*ServicePort{name: &svc}, Endpoints: map[ServicePortName][]Endpoint{name: tc.eps},
				Node: NodeInfo{Name: "node-a", Known: true}}
			p, ok := planServicePort(snap, defaultConfig(), &svc)
			if !ok {
				t.Fatal("no plan for a Service with a cluster IP")
			}
			if p.internal != tc.internal || p.external != tc.external {
				t.Errorf("internal %+v, external %+v; want %+v, %+v", p.internal, p.external, tc.internal, tc.external)
			}
			got := [4]bool{p.clusterChain, p.localChain, p.extChain, p.fwChain}
			if want := [4]bool{tc.clusterChain, tc.localChain, tc.ext, tc.fw}; got != want {
				t.Errorf("chains (SVC, SVL, EXT, FW) = %v, want %v", got, want)
			}
		})
	}
	// No cluster IP of the family: no rules at all.
	svc := ServicePort{Name: name, Port: 80, ClusterIPs: []netip.Addr{netip.MustParseAddr("fd00::10")}}
	if _, ok := planServicePort(&Snapshot{}, defaultConfig(), &svc); ok {
		t.Error("an IPv6-only Service got an IPv4 plan")
	}
}
