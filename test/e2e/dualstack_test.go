package e2e

import (
	"net"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/switchyard-proxy/switchyard/test/e2e/cluster"
)

func hostPort(ip string, port int32) string { return net.JoinHostPort(ip, itoa(port)) }

func dualStack(s *v1.Service) {
	s.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicyRequireDualStack)
	s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
}

func TestDualStackService(t *testing.T) {
	ns := c.Namespace(t)
	pods := c.Deploy(t, ns, "ds", 2)
	svc := c.CreateService(t, ns, "ds", cluster.ServiceOptions{Mutate: func(s *v1.Service) {
		dualStack(s)
		s.Spec.Type = v1.ServiceTypeNodePort
	}})
	if len(svc.Spec.ClusterIPs) != 2 {
		t.Fatalf("cluster IPs %v, want one per family", svc.Spec.ClusterIPs)
	}
	v4, v6 := svc.Spec.ClusterIPs[0], svc.Spec.ClusterIPs[1]
	client := c.StartPod(t, ns, cluster.PodOptions{Name: "client", Node: c.Nodes[1]})

	t.Run("IPv6 cluster IP from a pod, TCP and UDP, not masqueraded", func(t *testing.T) {
		seen := cluster.ReachesAll(t, client.NS.NS, "tcp", hostPort(v6, 80), cluster.Names(pods))
		for server, src := range seen {
			if src != client.IP6 {
				t.Errorf("%s saw %s, want the pod's own IPv6 address %s", server, src, client.IP6)
			}
		}
		cluster.ReachesAll(t, client.NS.NS, "udp", hostPort(v6, 53), cluster.Names(pods))
	})
	t.Run("IPv4 cluster IP still works", func(t *testing.T) {
		cluster.ReachesAll(t, client.NS.NS, "tcp", hostPort(v4, 80), cluster.Names(pods))
	})
	t.Run("IPv6 cluster IP from a node", func(t *testing.T) {
		cluster.ReachesAll(t, c.Nodes[0].NS, "tcp", hostPort(v6, 80), cluster.Names(pods))
	})
	t.Run("NodePort on the nodes' IPv6 addresses from outside", func(t *testing.T) {
		for _, n := range c.Nodes {
			cluster.ReachesAll(t, c.External, "tcp", hostPort(n.IP6, cluster.NodePortOf(svc, "http")), cluster.Names(pods))
		}
	})
	t.Run("no endpoints: refused over IPv6", func(t *testing.T) {
		for _, p := range pods {
			p.SetReady(t, false)
		}
		cluster.Refused(t, client.NS.NS, hostPort(v6, 80))
	})
}

func TestIPv6OnlyService(t *testing.T) {
	ns := c.Namespace(t)
	pods := c.Deploy(t, ns, "six", 2)
	svc := c.CreateService(t, ns, "six", cluster.ServiceOptions{Mutate: func(s *v1.Service) {
		s.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicySingleStack)
		s.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol}
	}})
	if net.ParseIP(svc.Spec.ClusterIP).To4() != nil {
		t.Fatalf("cluster IP %s is not IPv6", svc.Spec.ClusterIP)
	}
	client := c.StartPod(t, ns, cluster.PodOptions{Name: "client", Node: c.Nodes[0]})
	cluster.ReachesAll(t, client.NS.NS, "tcp", hostPort(svc.Spec.ClusterIP, 80), cluster.Names(pods))
}
