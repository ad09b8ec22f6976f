package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/switchyard-proxy/switchyard/test/e2e/cluster"
	"github.com/switchyard-proxy/switchyard/test/netns"
	"github.com/switchyard-proxy/switchyard/test/wait"
)

// The yardstick, side by side: node-1 runs switchyard and node-2 runs
// upstream kube-proxy v1.36.3 (iptables mode), and every Service shape is
// created twice, once for each node, with its pods placed the same way
// relative to the node probed (a pod on that node, a pod on the other,
// terminating, not ready, ...). The same probes go to each (from a pod on
// the node, from the node itself, from outside through it) and what came
// back must be the same: which pod answered, relative to the node; the
// client address the pod saw, relative to the prober; refused, or no answer
// at all.
//
// Traffic to a pod on the other node crosses that node's FORWARD chain, so
// each proxy's filter rules are on the path of the other's probes too; a
// difference there shows as well.
func TestSameFatesAsKubeProxy(t *testing.T) {
	if testing.Short() {
		t.Skip("long")
	}
	swy, kp := c.Nodes[0], c.Nodes[1]
	handOverToKubeProxy(t, kp)
	// A REJECT answers with an ICMP error, which the kernel rate-limits per
	// destination (one a second): outside clients would then see some
	// rejections as silence, at random. Off on both nodes while they are
	// compared.
	for _, n := range []*cluster.Node{swy, kp} {
		noICMPRateLimit(t, n)
	}
	ns := c.Namespace(t)

	clients := map[*cluster.Node]*cluster.Pod{}
	for _, n := range []*cluster.Node{swy, kp} {
		clients[n] = c.StartPod(t, ns, cluster.PodOptions{Name: fmt.Sprintf("client-%d", n.Index), Node: n})
	}
	var all []*paritySide
	for ci, pc := range parityCases() {
		for _, n := range []*cluster.Node{swy, kp} {
			peer := swy
			if n == swy {
				peer = kp
			}
			b := &paritySide{pc: pc, node: n, roles: map[string]string{}, client: clients[n],
				extIP: fmt.Sprintf("203.0.113.%d", 10+2*ci+n.Index-1), lbIP: fmt.Sprintf("198.51.100.%d", 10+2*ci+n.Index-1)}
			if pc.nodeIPAsExternal {
				b.extIP = n.IP
			}
			app := fmt.Sprintf("%s-%d", pc.name, n.Index)
			for i, role := range pc.pods {
				on := n
				if strings.HasPrefix(role, "peer") {
					on = peer
				}
				name := fmt.Sprintf("%s-%d", app, i+1)
				p := c.StartPod(t, ns, cluster.PodOptions{Name: name, Labels: map[string]string{"app": app}, Node: on,
					NotReady: strings.Contains(role, "-notready")})
				if strings.Contains(role, "-terminating") {
					p.Terminate(t)
				}
				b.roles[name] = role
				if pc.hairpin && i == 0 {
					b.client = p
				}
			}
			shape := pc.mutate
			if pc.before != nil {
				shape = pc.before
			}
			b.svc = c.CreateService(t, ns, app, cluster.ServiceOptions{Mutate: func(s *v1.Service) { shape(s, b.extIP, b.lbIP) }})
			if pc.lb {
				b.svc = c.SetLoadBalancerIngress(t, b.svc, b.lbIP)
			}
			if pc.proxyIPMode {
				b.svc = setIPModeProxy(t, b.svc)
			}
			// A router sending the service range to a node, as some
			// networks do.
			cluster.RouteVia(t, c.External, b.svc.Spec.ClusterIP, n)
			if (len(b.svc.Spec.ExternalIPs) > 0 || pc.before != nil) && !pc.nodeIPAsExternal {
				cluster.RouteVia(t, c.External, b.extIP, n)
				cluster.RouteVia(t, c.External2, b.extIP, n)
			}
			if pc.lb {
				cluster.RouteVia(t, c.External, b.lbIP, n)
				cluster.RouteVia(t, c.External2, b.lbIP, n)
			}
			all = append(all, b)
		}
	}
	// The Services created in another shape are reshaped once both
	// proxies have programmed them: the update is what those compare.
	for _, b := range all {
		if b.pc.before == nil {
			continue
		}
		waitForRules(t, b.node, b.svc)
		old := b.svc
		b.svc = reshape(t, b.svc, func(s *v1.Service) { b.pc.mutate(s, b.extIP, b.lbIP) })
		if np := cluster.NodePortOf(old, "http"); np != 0 && np != cluster.NodePortOf(b.svc, "http") {
			b.formerNodePort = np
		}
		for _, ip := range old.Spec.ExternalIPs {
			if !slices.Contains(b.svc.Spec.ExternalIPs, ip) {
				b.formerExtIPs = append(b.formerExtIPs, ip)
			}
		}
	}
	// Both proxies have every Service port before the probes start; the
	// probes then retry a difference until the deadline, as endpoint
	// changes (terminating, not ready) may still be on their way.
	for _, b := range all {
		waitForRules(t, b.node, b.svc)
	}

	var mismatches []string
	compared, answered := 0, 0
	for i := 0; i < len(all); i += 2 {
		a, k := all[i], all[i+1]
		pa, pk := a.probes(), k.probes()
		for j := range pa {
			var oa, ok string
			same := wait.Poll(20*time.Second, func() bool {
				oa, ok = pa[j].run(a), pk[j].run(k)
				return oa == ok
			})
			compared++
			if strings.Contains(oa, "(saw ") && strings.Contains(ok, "(saw ") {
				answered++
			}
			line := fmt.Sprintf("%-26s %-34s switchyard: %-40s kube-proxy: %s", a.pc.name, pa[j].what, oa, ok)
			t.Log(line)
			if !same {
				mismatches = append(mismatches, line)
			}
		}
		if a.pc.healthCheck {
			var ha, hk string
			same := wait.Poll(20*time.Second, func() bool {
				ha, hk = healthCheckStatus(a.svc, a.node), healthCheckStatus(k.svc, k.node)
				return ha == hk
			})
			compared++
			line := fmt.Sprintf("%-26s %-34s switchyard: %-40s kube-proxy: %s", a.pc.name, "health check node port", ha, hk)
			t.Log(line)
			if !same {
				mismatches = append(mismatches, line)
			}
		}
	}
	mismatches = append(mismatches, udpFlowsMove(t, ns, swy, kp)...)

	// The proxies' own health endpoints (kube-proxy's on the port the
	// harness gives it).
	for _, path := range []string{"/healthz", "/livez"} {
		ha, hk := proxyHealth(swy, 10256, path), proxyHealth(kp, 10266, path)
		compared++
		line := fmt.Sprintf("%-26s %-34s switchyard: %-40s kube-proxy: %s", "proxy", path, ha, hk)
		t.Log(line)
		if ha != hk {
			mismatches = append(mismatches, line)
		}
	}
	if len(mismatches) > 0 {
		t.Errorf("%d of %d probes differ from kube-proxy:\n%s", len(mismatches), compared, strings.Join(mismatches, "\n"))
	}
	// Equal is not enough: a pod network where nothing answers would make
	// every probe "no answer" on both nodes. Most cases send traffic that a
	// pod must answer.
	t.Logf("%d of %d probes were answered by a pod behind both proxies", answered, compared)
	if answered < compared/3 {
		t.Errorf("only %d of %d probes were answered by a pod behind both proxies: the comparison proves little", answered, compared)
	}
}

// handOverToKubeProxy stops switchyard on n, removes its rules, and runs
// upstream kube-proxy there instead; at the end it hands back the same way.
func handOverToKubeProxy(t *testing.T, n *cluster.Node) {
	t.Helper()
	t.Cleanup(func() {
		if out, err := n.Run(c.Opts.Switchyard, "cleanup", "--kube-proxy"); err != nil {
			t.Errorf("cleanup --kube-proxy on %s: %v\n%s", n.Name, err, out)
		}
		if err := n.StartProxy(nil); err != nil {
			t.Fatalf("restarting switchyard on %s: %v", n.Name, err)
		}
		if err := n.WaitProgrammed("default/kubernetes:https cluster IP", 60*time.Second); err != nil {
			t.Fatalf("%v", err)
		}
	})
	if err := n.StopProxy(); err != nil {
		t.Fatal(err)
	}
	if out, err := n.Run(c.Opts.Switchyard, "cleanup"); err != nil {
		t.Fatalf("cleanup on %s: %v\n%s", n.Name, err, out)
	}
	p := n.StartKubeProxy(t)
	if !wait.Poll(60*time.Second, func() bool {
		out, _ := n.Save("nat")
		return strings.Contains(out, "default/kubernetes:https cluster IP")
	}) {
		t.Fatalf("upstream kube-proxy never programmed the kubernetes Service (log: %s)", p.LogPath)
	}
}

// parityCase is one Service shape and where its pods are, relative to the
// node probed: "self" or "peer", with "-terminating" or "-notready".
type parityCase struct {
	name   string
	pods   []string
	mutate func(s *v1.Service, extIP, lbIP string)
	lb     bool
	// sticky: the answers all come from one pod, which one is chance.
	sticky bool
	// hairpin: the first pod is also the client.
	hairpin bool
	// healthCheck also compares the health check node port's answer (a
	// LoadBalancer with Local policy has one).
	healthCheck bool
	// wrongPort also probes a port the Service does not have.
	wrongPort bool
	// before, when set, is the shape the Service is created in; it is
	// changed to mutate's once both proxies have programmed it.
	before func(s *v1.Service, extIP, lbIP string)
	// nodeIPAsExternal: the external IP is the probed node's own address.
	nodeIPAsExternal bool
	// proxyIPMode: the load balancer ingress has ipMode Proxy.
	proxyIPMode bool
}

func parityCases() []parityCase {
	nodePort := func(etp, itp string) func(*v1.Service, string, string) {
		return func(s *v1.Service, _, _ string) {
			s.Spec.Type = v1.ServiceTypeNodePort
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicy(etp)
			if itp != "" {
				p := v1.ServiceInternalTrafficPolicy(itp)
				s.Spec.InternalTrafficPolicy = &p
			}
		}
	}
	both := []string{"self", "peer"}
	return []parityCase{
		{name: "cluster", pods: both, wrongPort: true, mutate: nodePort("Cluster", "")},
		{name: "etp-local", pods: both, mutate: nodePort("Local", "")},
		{name: "etp-local-peer-only", pods: []string{"peer"}, mutate: nodePort("Local", "")},
		{name: "etp-local-terminating", pods: []string{"self-terminating", "peer"}, mutate: nodePort("Local", "")},
		{name: "itp-local", pods: both, mutate: nodePort("Cluster", "Local")},
		{name: "itp-local-peer-only", pods: []string{"peer"}, mutate: nodePort("Cluster", "Local")},
		{name: "no-endpoints", mutate: nodePort("Cluster", "")},
		{name: "only-not-ready", pods: []string{"self-notready"}, mutate: nodePort("Cluster", "")},
		{name: "only-terminating", pods: []string{"self-terminating", "peer-notready"}, mutate: nodePort("Cluster", "")},
		// Two pods on the node: which one sticks is chance, and whether a
		// pod on the other node can answer an unmasqueraded client is not
		// what this compares.
		{name: "affinity", pods: []string{"self", "self"}, sticky: true, mutate: func(s *v1.Service, e, l string) {
			nodePort("Cluster", "")(s, e, l)
			s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		}},
		{name: "hairpin", pods: []string{"self"}, hairpin: true, mutate: func(*v1.Service, string, string) {}},
		{name: "hairpin-node-port", pods: []string{"self"}, hairpin: true, mutate: nodePort("Cluster", "")},
		{name: "hairpin-node-port-local", pods: []string{"self"}, hairpin: true, mutate: nodePort("Local", "")},
		{name: "prefer-same-zone", pods: both, mutate: func(s *v1.Service, _, _ string) {
			s.Spec.TrafficDistribution = ptr.To(v1.ServiceTrafficDistributionPreferSameZone)
		}},
		{name: "prefer-same-node", pods: both, mutate: func(s *v1.Service, _, _ string) {
			s.Spec.TrafficDistribution = ptr.To(v1.ServiceTrafficDistributionPreferSameNode)
		}},
		{name: "dual-stack", pods: both, mutate: func(s *v1.Service, e, l string) {
			nodePort("Cluster", "")(s, e, l)
			dualStack(s)
		}},
		{name: "dual-stack-local", pods: both, mutate: func(s *v1.Service, e, l string) {
			nodePort("Local", "")(s, e, l)
			dualStack(s)
		}},
		{name: "dual-stack-no-endpoints", mutate: func(s *v1.Service, e, l string) {
			nodePort("Cluster", "")(s, e, l)
			dualStack(s)
		}},
		{name: "external-ip", pods: both, mutate: func(s *v1.Service, extIP, _ string) { s.Spec.ExternalIPs = []string{extIP} }},
		{name: "external-ip-local", pods: []string{"peer"}, mutate: func(s *v1.Service, extIP, l string) {
			nodePort("Local", "")(s, extIP, l)
			s.Spec.ExternalIPs = []string{extIP}
		}},
		// (One Service only: two with the node's address as external IP
		// would claim the same address and port.)
		{name: "external-ip-is-node-ip-local", pods: []string{"peer"}, nodeIPAsExternal: true, mutate: func(s *v1.Service, extIP, l string) {
			nodePort("Local", "")(s, extIP, l)
			s.Spec.ExternalIPs = []string{extIP}
		}},
		{name: "only-terminating-not-serving", pods: []string{"self-notready-terminating", "peer-notready"}, mutate: nodePort("Cluster", "")},
		{name: "lb-ip-mode-proxy", pods: both, lb: true, proxyIPMode: true, mutate: func(s *v1.Service, _, _ string) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
		}},
		// Updates: created in one shape, changed to another.
		{name: "was-node-port", pods: both, before: nodePort("Cluster", ""), mutate: func(*v1.Service, string, string) {}},
		{name: "was-local-now-cluster", pods: []string{"peer"}, before: nodePort("Local", ""), mutate: nodePort("Cluster", "")},
		{name: "was-cluster-now-local", pods: []string{"peer"}, before: nodePort("Cluster", ""), mutate: nodePort("Local", "")},
		{name: "was-itp-local", pods: []string{"peer"}, before: nodePort("Cluster", "Local"), mutate: nodePort("Cluster", "")},
		{name: "was-affinity", pods: both, before: func(s *v1.Service, _, _ string) {
			s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		}, mutate: func(*v1.Service, string, string) {}},
		{name: "was-external-ip", pods: both, before: func(s *v1.Service, extIP, _ string) {
			s.Spec.ExternalIPs = []string{extIP}
		}, mutate: func(*v1.Service, string, string) {}},
		{name: "was-source-ranges", pods: both, lb: true, before: func(s *v1.Service, _, _ string) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.LoadBalancerSourceRanges = []string{c.ExternalIP + "/32"}
		}, mutate: func(s *v1.Service, _, _ string) { s.Spec.Type = v1.ServiceTypeLoadBalancer }},
		{name: "lb-source-ranges", pods: both, lb: true, mutate: func(s *v1.Service, _, _ string) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.LoadBalancerSourceRanges = []string{c.ExternalIP + "/32"}
		}},
		{name: "lb-local", pods: both, lb: true, healthCheck: true, mutate: func(s *v1.Service, _, _ string) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		}},
		{name: "lb-local-peer-only", pods: []string{"peer"}, lb: true, healthCheck: true, mutate: func(s *v1.Service, _, _ string) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		}},
		{name: "lb-local-terminating", pods: []string{"self-terminating", "peer"}, lb: true, healthCheck: true, mutate: func(s *v1.Service, _, _ string) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		}},
		{name: "lb-no-endpoints", lb: true, mutate: func(s *v1.Service, _, _ string) { s.Spec.Type = v1.ServiceTypeLoadBalancer }},
	}
}

// probe is one kind of request to one address from one place.
// paritySide is one of a case's two Services: the node it is probed on,
// its pods by role, and the client pod there.
type paritySide struct {
	pc     parityCase
	node   *cluster.Node
	svc    *v1.Service
	roles  map[string]string // pod name -> role relative to node
	client *cluster.Pod
	extIP  string
	lbIP   string
	// formerNodePort and formerExtIPs are what the shape at creation had
	// and the final one does not: still probed.
	formerNodePort int32
	formerExtIPs   []string
}

// probe is one kind of request to one address from one place.
type probe struct {
	what  string
	from  func(*paritySide) (ns *netns.NS, addrs []string)
	proto string
	addr  string
}

// Where probes come from, with every address of the prober.
var (
	fromPod = func(b *paritySide) (*netns.NS, []string) {
		return b.client.NS.NS, []string{b.client.IP, b.client.IP6}
	}
	fromNode    = func(b *paritySide) (*netns.NS, []string) { return b.node.NS, []string{b.node.IP, b.node.IP6} }
	fromOutside = func(*paritySide) (*netns.NS, []string) {
		return c.External, []string{c.ExternalIP, c.ExternalIP6}
	}
	fromOtherOutside = func(*paritySide) (*netns.NS, []string) { return c.External2, []string{c.External2IP} }
)

// probes are the requests this side's Service is compared by.
func (b *paritySide) probes() []probe {
	n, svc := b.node, b.svc
	cip := svc.Spec.ClusterIP
	np := cluster.NodePortOf(svc, "http")
	out := []probe{
		{"pod -> cluster IP tcp", fromPod, "tcp", cip + ":80"},
		{"pod -> cluster IP udp", fromPod, "udp", cip + ":53"},
	}
	if b.pc.hairpin {
		if np != 0 {
			out = append(out, probe{"pod -> node port", fromPod, "tcp", hostPort(n.IP, np)})
		}
		return out
	}
	out = append(out,
		probe{"node -> cluster IP tcp", fromNode, "tcp", cip + ":80"},
		probe{"outside -> cluster IP", fromOutside, "tcp", cip + ":80"})
	if b.pc.wrongPort {
		out = append(out, probe{"pod -> cluster IP, port not in the Service", fromPod, "tcp", cip + ":81"})
	}
	if np != 0 {
		at := hostPort(n.IP, np)
		out = append(out,
			probe{"outside -> node port tcp", fromOutside, "tcp", at},
			probe{"outside -> node port udp", fromOutside, "udp", hostPort(n.IP, cluster.NodePortOf(svc, "dns"))},
			probe{"pod -> node port", fromPod, "tcp", at},
			probe{"node -> node port", fromNode, "tcp", at},
			probe{"node -> localhost node port", fromNode, "tcp", hostPort("127.0.0.1", np)})
	}
	if len(svc.Spec.ClusterIPs) == 2 {
		cip6 := svc.Spec.ClusterIPs[1]
		out = append(out,
			probe{"pod -> IPv6 cluster IP tcp", fromPod, "tcp", hostPort(cip6, 80)},
			probe{"pod -> IPv6 cluster IP udp", fromPod, "udp", hostPort(cip6, 53)},
			probe{"node -> IPv6 cluster IP", fromNode, "tcp", hostPort(cip6, 80)})
		if np != 0 {
			out = append(out,
				probe{"outside -> IPv6 node port", fromOutside, "tcp", hostPort(n.IP6, np)},
				probe{"pod -> IPv6 node port", fromPod, "tcp", hostPort(n.IP6, np)})
		}
	}
	for _, ip := range svc.Spec.ExternalIPs {
		out = append(out,
			probe{"outside -> external IP", fromOutside, "tcp", ip + ":80"},
			probe{"pod -> external IP", fromPod, "tcp", ip + ":80"},
			probe{"node -> external IP", fromNode, "tcp", ip + ":80"})
	}
	if b.pc.lb {
		out = append(out,
			probe{"outside -> LB IP", fromOutside, "tcp", b.lbIP + ":80"},
			probe{"other outside -> LB IP", fromOtherOutside, "tcp", b.lbIP + ":80"},
			probe{"pod -> LB IP", fromPod, "tcp", b.lbIP + ":80"},
			probe{"node -> LB IP", fromNode, "tcp", b.lbIP + ":80"})
	}
	if b.formerNodePort != 0 {
		out = append(out, probe{"outside -> former node port", fromOutside, "tcp", hostPort(n.IP, b.formerNodePort)})
	}
	for _, ip := range b.formerExtIPs {
		out = append(out, probe{"outside -> former external IP", fromOutside, "tcp", ip + ":80"})
	}
	return out
}

// run sends up to 40 requests and describes what came back: each pod that
// answered by its role, with the client address it saw (relative: the
// prober itself, this node, the other node), or how the requests failed.
// It stops early once two pods answered, or after two failures alike.
func (p probe) run(b *paritySide) string {
	n := b.node
	ns, self := p.from(b)
	seen := map[string]bool{}
	failures := map[string]int{}
	for i := 0; i < 40; i++ {
		var a netns.Answer
		var err error
		if p.proto == "udp" {
			a, err = ns.GetUDP(p.addr, time.Second)
		} else {
			a, err = ns.GetTCP(p.addr, time.Second)
		}
		if err != nil {
			f := failureKind(err)
			failures[f]++
			seen[f] = true
			if failures[f] >= 2 {
				break
			}
			continue
		}
		role, ok := b.roles[a.Server]
		if !ok {
			role = "stranger " + a.Server
		}
		from := a.Client
		switch {
		case slices.Contains(self, a.Client):
			from = "the prober"
		case a.Client == n.IP || a.Client == n.IP6:
			from = "this node"
		default:
			for _, other := range c.Nodes {
				if other != n && (a.Client == other.IP || a.Client == other.IP6) {
					from = "the other node"
				}
			}
		}
		if b.pc.sticky {
			role = "one pod"
		}
		seen[role+" (saw "+from+")"] = true
		if len(seen) >= 2 && !b.pc.sticky {
			break
		}
	}
	if seen["refused"] {
		// The kernel rate-limits the ICMP errors a REJECT sends, so some
		// rejected requests go unanswered; a DROP never refuses any.
		delete(seen, "no answer")
	}
	var parts []string
	for s := range seen {
		parts = append(parts, s)
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// failureKind names how a request failed.
func failureKind(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, netns.ErrNoAnswer), errors.Is(err, os.ErrDeadlineExceeded):
		return "no answer"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "no answer"
	}
	return "error: " + err.Error()
}

// healthCheckStatus is the HTTP status of the Service's health check node
// port on the node, asked from outside.
func healthCheckStatus(svc *v1.Service, n *cluster.Node) string {
	if svc.Spec.HealthCheckNodePort == 0 {
		return "no health check node port"
	}
	var last string
	for i := 0; i < 3; i++ {
		resp, body, err := c.External.HTTPGet(fmt.Sprintf("http://%s:%d/healthz", n.IP, svc.Spec.HealthCheckNodePort), 2*time.Second)
		if err != nil {
			last = failureKind(err)
			continue
		}
		var answer struct {
			LocalEndpoints      int  `json:"localEndpoints"`
			ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
		}
		if err := json.Unmarshal(body, &answer); err != nil {
			return fmt.Sprintf("%s, body %q", http.StatusText(resp.StatusCode), body)
		}
		return fmt.Sprintf("%s, %d local endpoints, proxy healthy %v", http.StatusText(resp.StatusCode), answer.LocalEndpoints, answer.ServiceProxyHealthy)
	}
	return last
}

// proxyHealth describes the proxy's own health answer on the node: the
// status, and the body's fields with the times reduced to whether
// lastUpdated is the answer's own time.
func proxyHealth(n *cluster.Node, port int, path string) string {
	resp, body, err := c.External.HTTPGet(fmt.Sprintf("http://%s:%d%s", n.IP, port, path), 2*time.Second)
	if err != nil {
		return failureKind(err)
	}
	var a struct {
		LastUpdated  time.Time `json:"lastUpdated"`
		CurrentTime  time.Time `json:"currentTime"`
		NodeEligible *bool     `json:"nodeEligible"`
		Healthy      *bool     `json:"healthy"`
		Status       map[string]struct {
			LastUpdated time.Time `json:"lastUpdated"`
			Healthy     bool      `json:"healthy"`
		} `json:"status"`
	}
	if err := json.Unmarshal(body, &a); err != nil || a.Healthy == nil {
		return fmt.Sprintf("%s, body %q", http.StatusText(resp.StatusCode), body)
	}
	out := fmt.Sprintf("%s %s, healthy %v, lastUpdated is now %v", http.StatusText(resp.StatusCode), resp.Header.Get("Content-Type"),
		*a.Healthy, !a.LastUpdated.Before(a.CurrentTime.Add(-time.Second)))
	if a.NodeEligible != nil {
		out += fmt.Sprintf(", node eligible %v", *a.NodeEligible)
	}
	var families []string
	for f, st := range a.Status {
		families = append(families, fmt.Sprintf("%s healthy %v", f, st.Healthy))
	}
	sort.Strings(families)
	return out + ", " + strings.Join(families, ", ")
}

// udpFlowsMove compares what happens to UDP flows that already exist when
// their endpoint leaves the Service while still alive (it turned not
// ready) and another pod joins: a socket that keeps sending, from a pod on
// the node to the cluster IP and from outside to the node port. Upstream
// deletes such flows, so the next datagram is balanced afresh.
func udpFlowsMove(t *testing.T, ns string, nodes ...*cluster.Node) []string {
	t.Helper()
	type side struct {
		n        *cluster.Node
		old, new *cluster.Pod
		sessions map[string]*netns.UDPSession
		client   *cluster.Pod
		svc      *v1.Service
	}
	var sides []*side
	for _, n := range nodes {
		peer := nodes[0]
		if n == peer {
			peer = nodes[1]
		}
		app := fmt.Sprintf("udp-move-%d", n.Index)
		sd := &side{n: n, sessions: map[string]*netns.UDPSession{}}
		sd.old = c.StartPod(t, ns, cluster.PodOptions{Name: app + "-old", Labels: map[string]string{"app": app}, Node: n})
		sd.new = c.StartPod(t, ns, cluster.PodOptions{Name: app + "-new", Labels: map[string]string{"app": app}, Node: peer, NotReady: true})
		sd.client = c.StartPod(t, ns, cluster.PodOptions{Name: app + "-client", Node: n})
		extIP, lbIP := fmt.Sprintf("203.0.113.%d", 200+n.Index), fmt.Sprintf("198.51.100.%d", 200+n.Index)
		sd.svc = c.CreateService(t, ns, app, cluster.ServiceOptions{Ports: []v1.ServicePort{cluster.DNSPort}, Mutate: func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ExternalIPs = []string{extIP}
		}})
		sd.svc = c.SetLoadBalancerIngress(t, sd.svc, lbIP)
		cluster.RouteVia(t, c.External, extIP, n)
		cluster.RouteVia(t, c.External, lbIP, n)
		for what, at := range map[string]struct {
			from *netns.NS
			addr string
		}{
			"pod -> cluster IP":      {sd.client.NS.NS, cluster.Addr(sd.svc, 53)},
			"outside -> node port":   {c.External, hostPort(n.IP, cluster.NodePortOf(sd.svc, "dns"))},
			"outside -> external IP": {c.External, hostPort(extIP, 53)},
			"outside -> LB IP":       {c.External, hostPort(lbIP, 53)},
		} {
			session, err := at.from.DialUDP(at.addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = session.Close() })
			sd.sessions[what] = session
			if !wait.Poll(cluster.Converge, func() bool {
				a, err := session.Ask(200 * time.Millisecond)
				return err == nil && a.Server == sd.old.Name
			}) {
				t.Fatalf("%s on %s: the first pod never answered", what, n.Name)
			}
		}
		sides = append(sides, sd)
	}
	for _, sd := range sides {
		sd.new.SetReady(t, true)
		sd.old.SetReady(t, false)
	}
	outcome := map[*side]map[string]string{}
	for _, sd := range sides {
		// New flows go to the new pod: the proxy has the change.
		if !wait.Poll(cluster.Converge, func() bool {
			a, err := sd.client.NS.GetUDP(cluster.Addr(sd.svc, 53), 200*time.Millisecond)
			return err == nil && a.Server == sd.new.Name
		}) {
			t.Fatalf("%s: new UDP flows never reached the new pod", sd.n.Name)
		}
		outcome[sd] = map[string]string{}
		for what, session := range sd.sessions {
			var last string
			moved := wait.Poll(10*time.Second, func() bool {
				a, err := session.Ask(200 * time.Millisecond)
				switch {
				case err != nil:
					last = failureKind(err)
				case a.Server == sd.new.Name:
					return true
				default:
					last = "the old pod, not ready"
				}
				return false
			})
			if moved {
				outcome[sd][what] = "moved to the new pod"
			} else {
				outcome[sd][what] = "still " + last
			}
		}
	}
	var mismatches []string
	for what, a := range outcome[sides[0]] {
		k := outcome[sides[1]][what]
		line := fmt.Sprintf("%-26s %-34s switchyard: %-40s kube-proxy: %s", "udp-flow-endpoint-left", what, a, k)
		t.Log(line)
		if a != k {
			mismatches = append(mismatches, line)
		}
	}
	return mismatches
}

// noICMPRateLimit turns off the node's per-destination ICMP rate limits
// (IPv4 and IPv6) until the test ends.
func noICMPRateLimit(t *testing.T, n *cluster.Node) {
	t.Helper()
	for _, key := range []string{"net.ipv4.icmp_ratelimit", "net.ipv6.icmp.ratelimit"} {
		old, err := n.Run("sysctl", "-n", key)
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		if _, err := n.Run("sysctl", "-w", key+"=0"); err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		t.Cleanup(func() { _, _ = n.Run("sysctl", "-w", key+"="+strings.TrimSpace(old)) })
	}
}

// setIPModeProxy marks the Service's load balancer ingress ipMode Proxy:
// the load balancer delivers to the node with its own address as the
// destination, so the proxies leave the ingress IP alone.
func setIPModeProxy(t *testing.T, svc *v1.Service) *v1.Service {
	t.Helper()
	return c.UpdateService(t, svc, true, func(cur *v1.Service) {
		for i := range cur.Status.LoadBalancer.Ingress {
			cur.Status.LoadBalancer.Ingress[i].IPMode = ptr.To(v1.LoadBalancerIPModeProxy)
		}
	})
}

// waitForRules waits until the node's rules mention every port of svc.
func waitForRules(t *testing.T, n *cluster.Node, svc *v1.Service) {
	t.Helper()
	for _, p := range svc.Spec.Ports {
		name := fmt.Sprintf("%s/%s:%s ", svc.Namespace, svc.Name, p.Name)
		if !wait.Poll(60*time.Second, func() bool {
			nat, _ := n.Save("nat")
			filter, _ := n.Save("filter")
			return strings.Contains(nat+filter, name)
		}) {
			t.Fatalf("%s: no rules for %s", n.Name, name)
		}
	}
}

// reshape updates svc to the shape mutate gives a plain ClusterIP Service
// (the fields the cases set are reset first), as kubectl apply would.
func reshape(t *testing.T, svc *v1.Service, mutate func(*v1.Service)) *v1.Service {
	t.Helper()
	return c.UpdateService(t, svc, false, func(cur *v1.Service) {
		cur.Spec.Type = v1.ServiceTypeClusterIP
		cur.Spec.ExternalTrafficPolicy = ""
		cur.Spec.InternalTrafficPolicy = nil
		cur.Spec.ExternalIPs = nil
		cur.Spec.SessionAffinity, cur.Spec.SessionAffinityConfig = v1.ServiceAffinityNone, nil
		cur.Spec.LoadBalancerSourceRanges = nil
		cur.Spec.TrafficDistribution = nil
		mutate(cur)
	})
}
