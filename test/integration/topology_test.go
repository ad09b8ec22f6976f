package integration

import (
	"net/netip"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/pkg/proxier"
	"github.com/switchyard-proxy/switchyard/test/netns"
)

// liveAddr is the ClusterIP of the live Service every topology serves.
const liveAddr = "10.96.255.1:80"

// topology is a node namespace with two pods serving the live Service and
// a client pod, so fault tests can run real requests through them.
type topology struct {
	node   *netns.Node
	client *netns.Pod
}

func newTopology(t *testing.T) *topology {
	t.Helper()
	node := netns.NewNode(t, "192.168.77.1")
	for i, ip := range []string{"10.244.0.11", "10.244.0.12"} {
		node.AddPod(t, ip).ServeTCP(t, ":8080", []string{"pod1", "pod2"}[i])
	}
	return &topology{node: node, client: node.AddPod(t, "10.244.0.20")}
}

// withLive adds the live Service (two endpoints: the topology's pods).
func withLive(snap *proxier.Snapshot) *proxier.Snapshot {
	n := proxier.ServicePortName{Namespace: "live", Name: "web", Port: "http", Protocol: v1.ProtocolTCP}
	snap.Services[n] = &proxier.ServicePort{Name: n, Port: 80, ClusterIPs: []netip.Addr{netip.MustParseAddrPort(liveAddr).Addr()}}
	snap.Endpoints[n] = []proxier.Endpoint{
		{Addr: netip.MustParseAddr("10.244.0.11"), Port: 8080, Ready: true, Serving: true},
		{Addr: netip.MustParseAddr("10.244.0.12"), Port: 8080, Ready: true, Serving: true},
	}
	return snap
}

// load starts a steady request loop from the client to the live Service.
func (tp *topology) load() *netns.Load {
	return netns.StartLoad(1000000, func() error {
		_, err := tp.client.GetTCP(liveAddr, 2*time.Second)
		return err
	})
}

// noFailures stops a load loop and fails the test if any request failed.
func noFailures(t *testing.T, what string, l *netns.Load, min int) {
	t.Helper()
	requests, failures, firstErr := l.Stop()
	if requests < min {
		t.Errorf("%s: only %d requests ran", what, requests)
	}
	if failures > 0 {
		t.Errorf("%s: %d of %d requests failed: %v", what, failures, requests, firstErr)
	}
	t.Logf("%s: %d requests, %d failed", what, requests, failures)
}
