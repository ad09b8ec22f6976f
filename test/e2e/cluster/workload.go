package cluster

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/switchyard-proxy/switchyard/test/netns"
	"github.com/switchyard-proxy/switchyard/test/wait"
)

// DefaultPorts are what every test pod serves unless told otherwise: two
// TCP ports and a UDP port, named so Services can use named targetPorts.
var DefaultPorts = []v1.ContainerPort{
	{Name: "http", ContainerPort: 8080, Protocol: v1.ProtocolTCP},
	{Name: "alt", ContainerPort: 8081, Protocol: v1.ProtocolTCP},
	{Name: "dns", ContainerPort: 5353, Protocol: v1.ProtocolUDP},
}

var nsCounter atomic.Int32

// Namespace creates a Kubernetes namespace for one test. When the test ends
// its pods are force-deleted (there is no kubelet to finish graceful
// deletion) and the namespace removed; a failed test's node rules and
// objects are dumped into the log directory first.
func (c *Cluster) Namespace(t testing.TB) string {
	t.Helper()
	name := strings.ToLower(regexp.MustCompile(`[^a-zA-Z0-9]+`).ReplaceAllString(t.Name(), "-"))
	if len(name) > 40 {
		name = name[:40]
	}
	name = fmt.Sprintf("%s-%d", strings.Trim(name, "-"), nsCounter.Add(1))
	ctx := context.Background()
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			dir := c.Opts.LogDir + "/" + name
			c.Dump(dir)
			t.Logf("node rules and objects dumped to %s", dir)
		}
		zero := int64(0)
		_ = c.Client.CoreV1().Pods(name).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{})
		_ = c.Client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
	})
	return name
}

// Pod is a test pod: a network namespace behind a node running our echo
// servers, and the Pod object whose status we set as a kubelet would.
type Pod struct {
	Name      string
	Namespace string
	IP        string
	IP6       string
	Node      *Node
	NS        *netns.Pod
	c         *Cluster
	stops     []func()
}

// PodOptions describe a pod to start.
type PodOptions struct {
	Name   string
	Labels map[string]string
	Node   *Node
	// Ports default to DefaultPorts.
	Ports []v1.ContainerPort
	// NotReady starts the pod unready.
	NotReady bool
}

// StartPod creates the pod's namespace and servers, the Pod object, and its
// running status.
func (c *Cluster) StartPod(t netns.T, namespace string, o PodOptions) *Pod {
	t.Helper()
	n := o.Node
	n.mu.Lock()
	n.nextPod++
	ip := fmt.Sprintf("10.244.%d.%d", n.Index, n.nextPod+1)
	ip6 := fmt.Sprintf("fd00:10:244:%d::%x", n.Index, n.nextPod+1)
	n.mu.Unlock()
	if o.Ports == nil {
		o.Ports = DefaultPorts
	}
	p := &Pod{Name: o.Name, Namespace: namespace, IP: ip, IP6: ip6, Node: n, c: c}
	p.NS = n.AddDualStackPod(t, netns.UniqueName("pod"), ip, ip6)
	for _, port := range o.Ports {
		addr := fmt.Sprintf(":%d", port.ContainerPort)
		switch port.Protocol {
		case v1.ProtocolUDP:
			p.stops = append(p.stops, p.NS.ServeUDP(t, addr, o.Name))
		default:
			p.stops = append(p.stops, p.NS.ServeTCP(t, addr, o.Name))
		}
	}
	ctx := context.Background()
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: o.Name, Namespace: namespace, Labels: o.Labels},
		Spec: v1.PodSpec{
			NodeName:   n.Name,
			Containers: []v1.Container{{Name: "echo", Image: "switchyard.invalid/e2e-echo", Ports: o.Ports}},
		},
	}
	if _, err := c.Client.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating pod %s: %v", o.Name, err)
	}
	p.SetReady(t, !o.NotReady)
	return p
}

// SetReady sets the pod's status: Running with its IP, Ready or not.
func (p *Pod) SetReady(t netns.T, ready bool) {
	t.Helper()
	ctx := context.Background()
	status := v1.ConditionFalse
	if ready {
		status = v1.ConditionTrue
	}
	err := wait.Retry(10*time.Second, func() error {
		pod, err := p.c.Client.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		pod.Status.Phase = v1.PodRunning
		pod.Status.HostIP = p.Node.IP
		pod.Status.HostIPs = []v1.HostIP{{IP: p.Node.IP}, {IP: p.Node.IP6}}
		pod.Status.PodIP = p.IP
		pod.Status.PodIPs = []v1.PodIP{{IP: p.IP}, {IP: p.IP6}}
		if pod.Status.StartTime == nil {
			pod.Status.StartTime = &now
		}
		pod.Status.Conditions = []v1.PodCondition{
			{Type: v1.PodScheduled, Status: v1.ConditionTrue, LastTransitionTime: now},
			{Type: v1.PodInitialized, Status: v1.ConditionTrue, LastTransitionTime: now},
			{Type: v1.ContainersReady, Status: status, LastTransitionTime: now},
			{Type: v1.PodReady, Status: status, LastTransitionTime: now},
		}
		_, err = p.c.Client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("setting status of pod %s: %v", p.Name, err)
	}
}

// Terminate deletes the pod gracefully: with no kubelet to finish the
// deletion it stays terminating (and keeps serving) until Delete.
func (p *Pod) Terminate(t netns.T) {
	t.Helper()
	grace := int64(3600)
	if err := p.c.Client.CoreV1().Pods(p.Namespace).Delete(context.Background(), p.Name, metav1.DeleteOptions{GracePeriodSeconds: &grace}); err != nil {
		t.Fatalf("terminating pod %s: %v", p.Name, err)
	}
}

// Delete removes the Pod object at once and tears the pod's network down.
func (p *Pod) Delete(t netns.T) {
	t.Helper()
	zero := int64(0)
	err := p.c.Client.CoreV1().Pods(p.Namespace).Delete(context.Background(), p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("deleting pod %s: %v", p.Name, err)
	}
	for _, stop := range p.stops {
		stop()
	}
	if err := p.NS.Delete(); err != nil {
		t.Fatalf("%v", err)
	}
}

// Deploy starts replicas pods labelled app=NAME, spread over the nodes
// round-robin, named NAME-1, NAME-2, ...
func (c *Cluster) Deploy(t netns.T, namespace, name string, replicas int) []*Pod {
	t.Helper()
	var pods []*Pod
	for i := 0; i < replicas; i++ {
		pods = append(pods, c.StartPod(t, namespace, PodOptions{
			Name: fmt.Sprintf("%s-%d", name, i+1), Labels: map[string]string{"app": name}, Node: c.Nodes[i%len(c.Nodes)],
		}))
	}
	return pods
}

// ServiceOptions describe a Service; by default it selects app=NAME and
// exposes port 80 -> "http" and UDP 53 -> "dns".
type ServiceOptions struct {
	Selector map[string]string
	Ports    []v1.ServicePort
	Mutate   func(*v1.Service)
}

// HTTPPort is port 80 to the named target port "http".
var HTTPPort = v1.ServicePort{Name: "http", Port: 80, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromString("http")}

// DNSPort is UDP port 53 to the named target port "dns".
var DNSPort = v1.ServicePort{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP, TargetPort: intstr.FromString("dns")}

// CreateService creates a Service and returns it with its cluster IP.
func (c *Cluster) CreateService(t netns.T, namespace, name string, o ServiceOptions) *v1.Service {
	t.Helper()
	if o.Selector == nil {
		o.Selector = map[string]string{"app": name}
	}
	if o.Ports == nil {
		o.Ports = []v1.ServicePort{HTTPPort, DNSPort}
	}
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec:       v1.ServiceSpec{Selector: o.Selector, Ports: o.Ports},
	}
	if o.Mutate != nil {
		o.Mutate(svc)
	}
	created, err := c.Client.CoreV1().Services(namespace).Create(context.Background(), svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating service %s: %v", name, err)
	}
	return created
}

// Addr is "clusterIP:port" of a Service's port.
func Addr(svc *v1.Service, port int32) string {
	return fmt.Sprintf("%s:%d", svc.Spec.ClusterIP, port)
}

// Names returns the pods' names.
func Names(pods []*Pod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.Name)
	}
	return out
}

// SetLoadBalancerIngress sets a Service's load balancer ingress IPs, as a
// cloud controller would.
func (c *Cluster) SetLoadBalancerIngress(t netns.T, svc *v1.Service, ips ...string) *v1.Service {
	t.Helper()
	return c.UpdateService(t, svc, true, func(cur *v1.Service) {
		cur.Status.LoadBalancer.Ingress = nil
		for _, ip := range ips {
			cur.Status.LoadBalancer.Ingress = append(cur.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip})
		}
	})
}

// UpdateService applies change to the Service as it is now and writes it
// back (its status when status is set), retrying conflicts.
func (c *Cluster) UpdateService(t netns.T, svc *v1.Service, status bool, change func(*v1.Service)) *v1.Service {
	t.Helper()
	var out *v1.Service
	services := c.Client.CoreV1().Services(svc.Namespace)
	err := wait.Retry(10*time.Second, func() error {
		cur, err := services.Get(context.Background(), svc.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		change(cur)
		if status {
			out, err = services.UpdateStatus(context.Background(), cur, metav1.UpdateOptions{})
		} else {
			out, err = services.Update(context.Background(), cur, metav1.UpdateOptions{})
		}
		return err
	})
	if err != nil {
		t.Fatalf("updating service %s: %v", svc.Name, err)
	}
	return out
}

// NodePortOf returns the nodePort of the Service port with the given name.
func NodePortOf(svc *v1.Service, port string) int32 {
	for _, p := range svc.Spec.Ports {
		if p.Name == port {
			return p.NodePort
		}
	}
	return 0
}
