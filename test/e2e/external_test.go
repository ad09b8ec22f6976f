package e2e

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/pkg/healthcheck"
	"github.com/switchyard-proxy/switchyard/test/e2e/cluster"
	"github.com/switchyard-proxy/switchyard/test/netns"
	"github.com/switchyard-proxy/switchyard/test/wait"
)

func nodePortService(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort }

func TestNodePortFromOutside(t *testing.T) {
	ns := c.Namespace(t)
	// One endpoint, on node-1: node-2 has none, which Cluster policy must
	// not care about.
	pod := c.StartPod(t, ns, cluster.PodOptions{Name: "np-1", Labels: map[string]string{"app": "np"}, Node: c.Nodes[0]})
	svc := c.CreateService(t, ns, "np", cluster.ServiceOptions{Mutate: nodePortService})
	httpNP, dnsNP := cluster.NodePortOf(svc, "http"), cluster.NodePortOf(svc, "dns")
	for _, n := range c.Nodes {
		seen := cluster.ReachesAll(t, c.External, "tcp", fmt.Sprintf("%s:%d", n.IP, httpNP), []string{pod.Name})
		if seen[pod.Name] == c.ExternalIP {
			t.Errorf("via %s: Cluster policy kept the client address; it must be masqueraded", n.Name)
		}
		cluster.ReachesAll(t, c.External, "udp", fmt.Sprintf("%s:%d", n.IP, dnsNP), []string{pod.Name})
	}
	// From a pod and from the node itself, too.
	client := c.StartPod(t, ns, cluster.PodOptions{Name: "client", Node: c.Nodes[1]})
	cluster.ReachesAll(t, client.NS.NS, "tcp", fmt.Sprintf("%s:%d", c.Nodes[1].IP, httpNP), []string{pod.Name})
	cluster.ReachesAll(t, c.Nodes[1].NS, "tcp", fmt.Sprintf("%s:%d", c.Nodes[1].IP, httpNP), []string{pod.Name})
	// And on the node's loopback (route_localnet).
	cluster.ReachesAll(t, c.Nodes[1].NS, "tcp", fmt.Sprintf("127.0.0.1:%d", httpNP), []string{pod.Name})

	// Without endpoints, the NodePort is refused at once.
	pod.SetReady(t, false)
	for _, n := range c.Nodes {
		cluster.Refused(t, c.External, fmt.Sprintf("%s:%d", n.IP, httpNP))
	}
}

func TestExternalTrafficPolicyLocalKeepsClientAddress(t *testing.T) {
	ns := c.Namespace(t)
	pod := c.StartPod(t, ns, cluster.PodOptions{Name: "local-1", Labels: map[string]string{"app": "local"}, Node: c.Nodes[0]})
	svc := c.CreateService(t, ns, "local", cluster.ServiceOptions{Mutate: func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	}})
	np := cluster.NodePortOf(svc, "http")
	seen := cluster.ReachesAll(t, c.External, "tcp", fmt.Sprintf("%s:%d", c.Nodes[0].IP, np), []string{pod.Name})
	if seen[pod.Name] != c.ExternalIP {
		t.Errorf("the pod saw %s, want the external client's own address %s", seen[pod.Name], c.ExternalIP)
	}
	// node-2 has no local endpoint: it drops (no answer, no refusal).
	cluster.NoAnswer(t, c.External, fmt.Sprintf("%s:%d", c.Nodes[1].IP, np))
	// Pods anywhere are short-circuited to the endpoint, even via node-2.
	client := c.StartPod(t, ns, cluster.PodOptions{Name: "client", Node: c.Nodes[1]})
	cluster.ReachesAll(t, client.NS.NS, "tcp", fmt.Sprintf("%s:%d", c.Nodes[1].IP, np), []string{pod.Name})
}

func TestExternalIPAndLoadBalancerIP(t *testing.T) {
	ns := c.Namespace(t)
	pods := c.Deploy(t, ns, "pub", 2)
	const externalIP, lbIP = "192.168.99.10", "192.168.99.20"
	svc := c.CreateService(t, ns, "pub", cluster.ServiceOptions{Mutate: func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.ExternalIPs = []string{externalIP}
	}})
	c.SetLoadBalancerIngress(t, svc, lbIP)
	cluster.RouteVia(t, c.External, externalIP+"/32", c.Nodes[0])
	cluster.RouteVia(t, c.External, lbIP+"/32", c.Nodes[1])
	cluster.ReachesAll(t, c.External, "tcp", externalIP+":80", cluster.Names(pods))
	cluster.ReachesAll(t, c.External, "tcp", lbIP+":80", cluster.Names(pods))
	cluster.ReachesAll(t, c.External, "udp", lbIP+":53", cluster.Names(pods))
}

func TestLoadBalancerSourceRanges(t *testing.T) {
	ns := c.Namespace(t)
	pods := c.Deploy(t, ns, "ranged", 2)
	const lbIP = "192.168.99.30"
	svc := c.CreateService(t, ns, "ranged", cluster.ServiceOptions{Mutate: func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.LoadBalancerSourceRanges = []string{c.ExternalIP + "/32"}
	}})
	c.SetLoadBalancerIngress(t, svc, lbIP)
	for _, client := range []*netns.NS{c.External, c.External2} {
		cluster.RouteVia(t, client, lbIP+"/32", c.Nodes[0])
	}
	cluster.ReachesAll(t, c.External, "tcp", lbIP+":80", cluster.Names(pods))
	cluster.NoAnswer(t, c.External2, lbIP+":80")
	// NodePorts are not restricted by the ranges.
	cluster.ReachesAll(t, c.External2, "tcp", fmt.Sprintf("%s:%d", c.Nodes[0].IP, cluster.NodePortOf(svc, "http")), cluster.Names(pods))
}

type healthAnswer struct {
	status int
	weight string
	body   healthcheck.Response
}

func healthCheck(n *cluster.Node, port int32) (healthAnswer, error) {
	var a healthAnswer
	resp, body, err := c.External.HTTPGet(fmt.Sprintf("http://%s:%d/", n.IP, port), 2*time.Second)
	if err != nil {
		return a, err
	}
	a.status = resp.StatusCode
	a.weight = resp.Header.Get("X-Load-Balancing-Endpoint-Weight")
	if err := json.Unmarshal(body, &a.body); err != nil {
		return a, fmt.Errorf("body %q: %w", body, err)
	}
	return a, nil
}

// waitHealth waits until node's health check answers with status.
func waitHealth(t *testing.T, n *cluster.Node, port int32, status int) healthAnswer {
	t.Helper()
	var a healthAnswer
	err := wait.Retry(cluster.Converge, func() (err error) {
		a, err = healthCheck(n, port)
		if err == nil && a.status != status {
			err = fmt.Errorf("status %d (%+v)", a.status, a.body)
		}
		return err
	})
	if err != nil {
		t.Fatalf("health check node port %d on %s: want %d: %v", port, n.Name, status, err)
	}
	return a
}

func TestHealthCheckNodePort(t *testing.T) {
	ns := c.Namespace(t)
	first := c.StartPod(t, ns, cluster.PodOptions{Name: "hc-1", Labels: map[string]string{"app": "hc"}, Node: c.Nodes[0]})
	svc := c.CreateService(t, ns, "hc", cluster.ServiceOptions{Mutate: func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	}})
	port := svc.Spec.HealthCheckNodePort
	if port == 0 {
		t.Fatal("the apiserver allocated no health check node port")
	}
	a := waitHealth(t, c.Nodes[0], port, 200)
	if a.body.LocalEndpoints != 1 || !a.body.ServiceProxyHealthy || a.body.Service.Name != "hc" || a.body.Service.Namespace != ns || a.weight != "1" {
		t.Errorf("node-1 answered %+v", a)
	}
	waitHealth(t, c.Nodes[1], port, 503)

	// The pod moves to node-2: the answers swap.
	c.StartPod(t, ns, cluster.PodOptions{Name: "hc-2", Labels: map[string]string{"app": "hc"}, Node: c.Nodes[1]})
	first.Delete(t)
	waitHealth(t, c.Nodes[1], port, 200)
	waitHealth(t, c.Nodes[0], port, 503)

	// The Service goes: the port closes.
	if err := deleteService(ns, "hc"); err != nil {
		t.Fatal(err)
	}
	if !wait.Poll(cluster.Converge, func() bool { _, err := healthCheck(c.Nodes[1], port); return err != nil }) {
		t.Error("health check node port still open after the Service was deleted")
	}
}
