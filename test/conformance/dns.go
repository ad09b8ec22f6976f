package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/switchyard-proxy/switchyard/test/e2e/cluster"
	"github.com/switchyard-proxy/switchyard/test/netns"
)

// The cluster DNS: CoreDNS (built from its module) in a namespace of its
// own on the underlay, behind the kube-dns Service that every pod's
// resolv.conf names. Pods reach it only through the service proxy under
// test, as on a real cluster.
const (
	clusterDNSIP = "10.96.0.10"
	dnsSuffix    = ".53" // the DNS namespace's host part on the underlay
)

// startDNS starts CoreDNS at addr (in ns) with the kubernetes plugin
// reading the cluster through the admin kubeconfig, and creates the
// kube-dns Service with an EndpointSlice pointing at it.
func startDNS(o *cluster.Owner, client kubernetes.Interface, ns *netns.NS, addr, toolsDir, kubeconfig, dir, logDir string) error {
	corefile := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(corefile, []byte(fmt.Sprintf(`.:53 {
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig %s
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
}
`, kubeconfig)), 0o644); err != nil {
		return err
	}
	p, err := cluster.StartProcess("coredns", ns.Command(filepath.Join(toolsDir, "coredns"), "-conf", corefile, "-dns.port", "53"),
		filepath.Join(logDir, "coredns.log"), nil)
	if err != nil {
		return err
	}
	o.Cleanup(func() { _ = p.Stop(5 * time.Second) })

	ctx := context.Background()
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: "kube-system", Labels: map[string]string{"k8s-app": "kube-dns"}},
		Spec: v1.ServiceSpec{ClusterIP: clusterDNSIP, Ports: []v1.ServicePort{
			{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: intstr.FromInt32(53)},
			{Name: "dns-tcp", Protocol: v1.ProtocolTCP, Port: 53, TargetPort: intstr.FromInt32(53)},
		}},
	}
	if _, err := client.CoreV1().Services("kube-system").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating kube-system/kube-dns: %w", err)
	}
	ready := true
	udp, tcp := v1.ProtocolUDP, v1.ProtocolTCP
	dns, dnsTCP := "dns", "dns-tcp"
	port := int32(53)
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns-coredns", Namespace: "kube-system", Labels: map[string]string{
			discoveryv1.LabelServiceName: "kube-dns",
			discoveryv1.LabelManagedBy:   "conformance.switchyard.dev",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		Ports:       []discoveryv1.EndpointPort{{Name: &dns, Protocol: &udp, Port: &port}, {Name: &dnsTCP, Protocol: &tcp, Port: &port}},
	}
	if _, err := client.DiscoveryV1().EndpointSlices("kube-system").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating the kube-dns EndpointSlice: %w", err)
	}
	return nil
}
