package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/switchyard-proxy/switchyard/test/e2e/cluster"
	"github.com/switchyard-proxy/switchyard/test/netns"
)

func TestInternalTrafficPolicyLocal(t *testing.T) {
	ns := c.Namespace(t)
	c.StartPod(t, ns, cluster.PodOptions{Name: "local-1", Labels: map[string]string{"app": "itp"}, Node: c.Nodes[0]})
	svc := c.CreateService(t, ns, "itp", cluster.ServiceOptions{Mutate: func(s *v1.Service) {
		s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
	}})
	withLocal := c.StartPod(t, ns, cluster.PodOptions{Name: "client-1", Node: c.Nodes[0]})
	withoutLocal := c.StartPod(t, ns, cluster.PodOptions{Name: "client-2", Node: c.Nodes[1]})
	cluster.OnlyReaches(t, withLocal.NS.NS, "tcp", cluster.Addr(svc, 80), []string{"local-1"}, 10)
	// No local endpoint: dropped (no answer), not rejected.
	cluster.NoAnswer(t, withoutLocal.NS.NS, cluster.Addr(svc, 80))
}

// A rolling replacement as a Deployment does it: a new pod becomes ready,
// an old one terminates (still serving while the proxies catch up) and only
// then goes away. A steady request loop must see no failure at all, also
// while the last old pod serves alone as a terminating endpoint.
func TestRollingReplacementUnderLoad(t *testing.T) {
	ns := c.Namespace(t)
	old := c.Deploy(t, ns, "roll", 2)
	svc := c.CreateService(t, ns, "roll", cluster.ServiceOptions{})
	client := c.StartPod(t, ns, cluster.PodOptions{Name: "client", Node: c.Nodes[0]})
	addr := cluster.Addr(svc, 80)
	cluster.ReachesAll(t, client.NS.NS, "tcp", addr, cluster.Names(old))

	// Each step is logged with its time, so a failure can be placed.
	var steps []string
	step := func(format string, args ...any) {
		steps = append(steps, time.Now().Format("15:04:05.000")+" "+fmt.Sprintf(format, args...))
	}
	// Each request from a port of its own (LoadTCP): at a thousand
	// connections a second the kernel would otherwise reuse ports whose
	// old flows conntrack still holds, and lose a SYN to that, whatever
	// the proxy does.
	load := netns.StartLoad(20000, client.NS.LoadTCP(addr, cluster.RequestTimeout))
	var current []string
	var newPods []*cluster.Pod
	for i, o := range old {
		n := c.StartPod(t, ns, cluster.PodOptions{Name: "roll-new-" + itoa(int32(i+1)), Labels: map[string]string{"app": "roll"}, Node: o.Node})
		step("%s started", n.Name)
		current = append(current, n.Name)
		newPods = append(newPods, n)
		o.Terminate(t)
		step("%s terminating", o.Name)
		// The terminating pod stops getting new connections...
		keep := append(append([]string{}, current...), cluster.Names(old[i+1:])...)
		cluster.OnlyReaches(t, client.NS.NS, "tcp", addr, keep, 20)
		step("only %v answer", keep)
		// ...and only then, once no node sends it anything, stops serving.
		c.WaitUnrouted(t, o)
		step("%s in no node's rules", o.Name)
		o.Delete(t)
		step("%s deleted", o.Name)
	}
	// The last pod terminates with no replacement ready yet: it keeps
	// serving as a terminating endpoint instead of the Service refusing.
	// The others go as the old ones did (terminating first, gone once the
	// node no longer sends them anything): a pod deleted at once takes its
	// address with it before any proxy can react, which no proxy can hide.
	lastNew := current[len(current)-1]
	for _, p := range newPods[:len(newPods)-1] {
		p.Terminate(t)
		step("%s terminating", p.Name)
		cluster.OnlyReaches(t, client.NS.NS, "tcp", addr, []string{lastNew}, 20)
		step("only %s answers", lastNew)
		c.WaitUnrouted(t, p)
		step("%s in no node's rules", p.Name)
		p.Delete(t)
		step("%s deleted", p.Name)
	}
	grace := int64(3600)
	if err := c.Client.CoreV1().Pods(ns).Delete(context.Background(), lastNew, metav1.DeleteOptions{GracePeriodSeconds: &grace}); err != nil {
		t.Fatal(err)
	}
	step("%s terminating", lastNew)
	cluster.OnlyReaches(t, client.NS.NS, "tcp", addr, []string{lastNew}, 20)
	step("only %s answers", lastNew)

	requests, failures, firstErr := load.Stop()
	if failures > 0 {
		t.Fatalf("%d of %d requests failed during the rolling replacement; the first at %s: %v\nsteps:\n%s",
			failures, requests, load.FirstFailure().Format("15:04:05.000"), firstErr, strings.Join(steps, "\n"))
	}
	t.Logf("%d requests during the rolling replacement, none failed", requests)
}

func TestZoneHintsSteerTraffic(t *testing.T) {
	ns := c.Namespace(t)
	zoneA := c.StartPod(t, ns, cluster.PodOptions{Name: "in-zone-a", Labels: map[string]string{"app": "zoned"}, Node: c.Nodes[0]})
	zoneB := c.StartPod(t, ns, cluster.PodOptions{Name: "in-zone-b", Labels: map[string]string{"app": "zoned"}, Node: c.Nodes[1]})
	svc := c.CreateService(t, ns, "zoned", cluster.ServiceOptions{Mutate: func(s *v1.Service) {
		s.Spec.TrafficDistribution = ptr.To(v1.ServiceTrafficDistributionPreferSameZone)
	}})
	clientA := c.StartPod(t, ns, cluster.PodOptions{Name: "client-a", Node: c.Nodes[0]})
	clientB := c.StartPod(t, ns, cluster.PodOptions{Name: "client-b", Node: c.Nodes[1]})
	addr := cluster.Addr(svc, 80)
	cluster.OnlyReaches(t, clientA.NS.NS, "tcp", addr, []string{zoneA.Name}, 20)
	cluster.OnlyReaches(t, clientB.NS.NS, "tcp", addr, []string{zoneB.Name}, 20)

	// node-1 moves to zone-b: the EndpointSlice controller re-hints its pod
	// and switchyard on node-1 follows its Node's new zone, without restart.
	setZone(t, c.Nodes[0], "zone-b")
	t.Cleanup(func() { setZone(t, c.Nodes[0], c.Nodes[0].Zone) })
	cluster.ReachesAll(t, clientA.NS.NS, "tcp", addr, []string{zoneA.Name, zoneB.Name})
}

func setZone(t *testing.T, n *cluster.Node, zone string) {
	t.Helper()
	ctx := context.Background()
	node, err := c.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node.Labels["topology.kubernetes.io/zone"] = zone
	if _, err := c.Client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}
