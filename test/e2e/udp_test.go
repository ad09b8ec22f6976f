package e2e

import (
	"errors"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/test/e2e/cluster"
	"github.com/switchyard-proxy/switchyard/test/netns"
	"github.com/switchyard-proxy/switchyard/test/wait"
)

// askUntil keeps asking on one UDP session (so one conntrack flow, kept
// alive by the asking itself, as a busy DNS or statsd client does) until
// the answer satisfies ok. It returns how long that took.
func askUntil(t *testing.T, s *netns.UDPSession, what string, ok func(netns.Answer, error) bool) time.Duration {
	t.Helper()
	start := time.Now()
	var lastA netns.Answer
	var lastErr error
	if !wait.Poll(cluster.Converge, func() bool {
		lastA, lastErr = s.Ask(200 * time.Millisecond)
		return ok(lastA, lastErr)
	}) {
		t.Fatalf("UDP session never %s within %v (last answer %+v, error %v)", what, cluster.Converge, lastA, lastErr)
	}
	took := time.Since(start)
	t.Logf("UDP session %s after %v", what, took.Round(10*time.Millisecond))
	return took
}

func answeredBy(name string) func(netns.Answer, error) bool {
	return func(a netns.Answer, err error) bool { return err == nil && a.Server == name }
}

// A UDP client keeps one socket open and sends continuously while the
// Service's only endpoint is replaced, then while the Service goes
// 1 -> 0 -> 1 endpoints: the transitions behind kubernetes #19029, #48370
// and #139628, where stale conntrack entries black-holed UDP for as long as
// the client kept sending.
func TestUDPFlowsFollowEndpointChanges(t *testing.T) {
	ns := c.Namespace(t)
	podA := c.StartPod(t, ns, cluster.PodOptions{Name: "dns-a", Labels: map[string]string{"app": "dns"}, Node: c.Nodes[0]})
	svc := c.CreateService(t, ns, "dns", cluster.ServiceOptions{Ports: []v1.ServicePort{cluster.DNSPort}})
	client := c.StartPod(t, ns, cluster.PodOptions{Name: "client", Node: c.Nodes[1]})
	session, err := client.NS.DialUDP(cluster.Addr(svc, 53))
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	askUntil(t, session, "answered by dns-a", answeredBy("dns-a"))

	// Replace the only endpoint.
	podB := c.StartPod(t, ns, cluster.PodOptions{Name: "dns-b", Labels: map[string]string{"app": "dns"}, Node: c.Nodes[0]})
	podA.Delete(t)
	askUntil(t, session, "answered by dns-b after dns-a was replaced", answeredBy("dns-b"))

	// 1 -> 0: the flow to dns-b is deleted, so the client meets the REJECT
	// (ECONNREFUSED) instead of sending into a dead address.
	podB.Delete(t)
	askUntil(t, session, "refused once the Service had no endpoints", func(_ netns.Answer, err error) bool {
		return errors.Is(err, syscall.ECONNREFUSED)
	})

	// 0 -> 1: the new endpoint answers the same socket.
	c.StartPod(t, ns, cluster.PodOptions{Name: "dns-c", Labels: map[string]string{"app": "dns"}, Node: c.Nodes[1]})
	askUntil(t, session, "answered by dns-c after 0 -> 1", answeredBy("dns-c"))

	// The same through a NodePort, from outside.
	np := c.CreateService(t, ns, "dns-np", cluster.ServiceOptions{Selector: map[string]string{"app": "dns"},
		Ports: []v1.ServicePort{cluster.DNSPort}, Mutate: nodePortService})
	ext, err := c.External.DialUDP(c.Nodes[0].IP + ":" + itoa(cluster.NodePortOf(np, "dns")))
	if err != nil {
		t.Fatal(err)
	}
	defer ext.Close()
	askUntil(t, ext, "answered by dns-c through the NodePort", answeredBy("dns-c"))
	c.StartPod(t, ns, cluster.PodOptions{Name: "dns-d", Labels: map[string]string{"app": "dns"}, Node: c.Nodes[1]})
	if err := c.Client.CoreV1().Pods(ns).Delete(t.Context(), "dns-c", deleteNow()); err != nil {
		t.Fatal(err)
	}
	askUntil(t, ext, "answered by dns-d through the NodePort after dns-c went", answeredBy("dns-d"))
}
