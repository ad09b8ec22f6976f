package e2e

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/switchyard-proxy/switchyard/test/e2e/cluster"
	"github.com/switchyard-proxy/switchyard/test/netns"
)

func TestClusterIPFromPodAndNode(t *testing.T) {
	ns := c.Namespace(t)
	pods := c.Deploy(t, ns, "web", 3)
	svc := c.CreateService(t, ns, "web", cluster.ServiceOptions{})
	client := c.StartPod(t, ns, cluster.PodOptions{Name: "client", Node: c.Nodes[0]})

	t.Run("pod, TCP", func(t *testing.T) {
		seen := cluster.ReachesAll(t, client.NS.NS, "tcp", cluster.Addr(svc, 80), cluster.Names(pods))
		for server, src := range seen {
			if src != client.IP {
				t.Errorf("%s saw %s, want the client pod's own address %s (no masquerade)", server, src, client.IP)
			}
		}
	})
	t.Run("pod, UDP", func(t *testing.T) {
		cluster.ReachesAll(t, client.NS.NS, "udp", cluster.Addr(svc, 53), cluster.Names(pods))
	})
	for _, n := range c.Nodes {
		t.Run("node "+n.Name+", TCP and UDP", func(t *testing.T) {
			cluster.ReachesAll(t, n.NS, "tcp", cluster.Addr(svc, 80), cluster.Names(pods))
			cluster.ReachesAll(t, n.NS, "udp", cluster.Addr(svc, 53), cluster.Names(pods))
		})
	}
}

func TestMultiPortAndNamedTargetPort(t *testing.T) {
	ns := c.Namespace(t)
	// The named port "http" is 8080 on one pod and 8081 on the other.
	a := c.StartPod(t, ns, cluster.PodOptions{Name: "a", Labels: map[string]string{"app": "mp"}, Node: c.Nodes[0],
		Ports: []v1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: v1.ProtocolTCP}, {Name: "alt", ContainerPort: 8081, Protocol: v1.ProtocolTCP}}})
	b := c.StartPod(t, ns, cluster.PodOptions{Name: "b", Labels: map[string]string{"app": "mp"}, Node: c.Nodes[1],
		Ports: []v1.ContainerPort{{Name: "http", ContainerPort: 8081, Protocol: v1.ProtocolTCP}, {Name: "alt", ContainerPort: 8080, Protocol: v1.ProtocolTCP}}})
	svc := c.CreateService(t, ns, "mp", cluster.ServiceOptions{Ports: []v1.ServicePort{
		cluster.HTTPPort,
		{Name: "numbered", Port: 8080, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)},
	}})
	client := c.StartPod(t, ns, cluster.PodOptions{Name: "client", Node: c.Nodes[0]})
	cluster.ReachesAll(t, client.NS.NS, "tcp", cluster.Addr(svc, 80), []string{a.Name, b.Name})
	cluster.ReachesAll(t, client.NS.NS, "tcp", cluster.Addr(svc, 8080), []string{a.Name, b.Name})
}

func TestEndpointChangesConverge(t *testing.T) {
	ns := c.Namespace(t)
	pods := c.Deploy(t, ns, "web", 2)
	svc := c.CreateService(t, ns, "web", cluster.ServiceOptions{})
	client := c.StartPod(t, ns, cluster.PodOptions{Name: "client", Node: c.Nodes[1]})
	addr := cluster.Addr(svc, 80)
	cluster.ReachesAll(t, client.NS.NS, "tcp", addr, cluster.Names(pods))

	// Scale up.
	more := c.StartPod(t, ns, cluster.PodOptions{Name: "web-3", Labels: map[string]string{"app": "web"}, Node: c.Nodes[1]})
	pods = append(pods, more)
	cluster.ReachesAll(t, client.NS.NS, "tcp", addr, cluster.Names(pods))

	// Readiness off: web-1 stops getting traffic; on again: it is back.
	pods[0].SetReady(t, false)
	cluster.OnlyReaches(t, client.NS.NS, "tcp", addr, []string{"web-2", "web-3"}, 20)
	pods[0].SetReady(t, true)
	cluster.ReachesAll(t, client.NS.NS, "tcp", addr, cluster.Names(pods))

	// Pod deletion (scale down).
	pods[1].Delete(t)
	cluster.OnlyReaches(t, client.NS.NS, "tcp", addr, []string{"web-1", "web-3"}, 20)

	// A terminating pod still serving gets no new traffic while others are ready.
	pods[2].Terminate(t)
	cluster.OnlyReaches(t, client.NS.NS, "tcp", addr, []string{"web-1"}, 20)

	// A deleted Service stops answering.
	if err := deleteService(ns, "web"); err != nil {
		t.Fatal(err)
	}
	cluster.NoAnswer(t, client.NS.NS, addr)
}

func TestServiceWithoutEndpointsRejects(t *testing.T) {
	ns := c.Namespace(t)
	svc := c.CreateService(t, ns, "nobody", cluster.ServiceOptions{})
	client := c.StartPod(t, ns, cluster.PodOptions{Name: "client", Node: c.Nodes[0]})
	cluster.Refused(t, client.NS.NS, cluster.Addr(svc, 80))
	cluster.Refused(t, c.Nodes[1].NS, cluster.Addr(svc, 80))

	// Endpoints appear: it answers; they go unready: refused again.
	pod := c.StartPod(t, ns, cluster.PodOptions{Name: "late", Labels: map[string]string{"app": "nobody"}, Node: c.Nodes[1]})
	cluster.ReachesAll(t, client.NS.NS, "tcp", cluster.Addr(svc, 80), []string{"late"})
	pod.SetReady(t, false)
	cluster.Refused(t, client.NS.NS, cluster.Addr(svc, 80))
}

func TestHairpin(t *testing.T) {
	ns := c.Namespace(t)
	pod := c.StartPod(t, ns, cluster.PodOptions{Name: "solo", Labels: map[string]string{"app": "solo"}, Node: c.Nodes[0]})
	svc := c.CreateService(t, ns, "solo", cluster.ServiceOptions{})
	seen := cluster.ReachesAll(t, pod.NS.NS, "tcp", cluster.Addr(svc, 80), []string{"solo"})
	if seen["solo"] == pod.IP {
		t.Errorf("hairpin connection was not masqueraded: the pod saw its own address")
	}
}

func TestSessionAffinityClientIP(t *testing.T) {
	ns := c.Namespace(t)
	c.Deploy(t, ns, "sticky", 3)
	svc := c.CreateService(t, ns, "sticky", cluster.ServiceOptions{Mutate: func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
	}})
	clientA := c.StartPod(t, ns, cluster.PodOptions{Name: "client-a", Node: c.Nodes[0]})
	clientB := c.StartPod(t, ns, cluster.PodOptions{Name: "client-b", Node: c.Nodes[1]})
	addr := cluster.Addr(svc, 80)
	for _, client := range []*cluster.Pod{clientA, clientB} {
		first := cluster.Answers(t, client.NS.NS, "tcp", addr)
		counts := cluster.OnlyReaches(t, client.NS.NS, "tcp", addr, []string{first.Server}, 30)
		if len(counts) != 1 {
			t.Errorf("%s reached %v with ClientIP affinity", client.Name, counts)
		}
	}
}

func TestRestartUnderLoad(t *testing.T) {
	ns := c.Namespace(t)
	pods := c.Deploy(t, ns, "steady", 2)
	svc := c.CreateService(t, ns, "steady", cluster.ServiceOptions{})
	client := c.StartPod(t, ns, cluster.PodOptions{Name: "client", Node: c.Nodes[0]})
	addr := cluster.Addr(svc, 80)
	cluster.ReachesAll(t, client.NS.NS, "tcp", addr, cluster.Names(pods))

	load := netns.StartLoad(20000, client.NS.LoadTCP(addr, cluster.RequestTimeout))
	for round := 0; round < 2; round++ {
		for _, n := range c.Nodes {
			if err := n.RestartProxy(); err != nil {
				t.Fatal(err)
			}
			if err := n.WaitProxySynced(cluster.Converge); err != nil {
				t.Fatal(err)
			}
		}
	}
	requests, failures, firstErr := load.Stop()
	if requests < 20 {
		t.Fatalf("only %d requests overlapped the restarts", requests)
	}
	if failures > 0 {
		t.Fatalf("%d of %d requests failed while switchyard restarted: %v", failures, requests, firstErr)
	}
	t.Logf("%d requests across 4 restarts, none failed", requests)
}
