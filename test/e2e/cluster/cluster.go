package cluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/switchyard-proxy/switchyard/test/netns"
	"github.com/switchyard-proxy/switchyard/test/wait"
)

// ClusterCIDR is the IPv4 pod network; node i owns 10.244.i.0/24.
const ClusterCIDR = "10.244.0.0/16"

// ClusterCIDR6 is the IPv6 pod network; node i owns fd00:10:244:i::/64.
const ClusterCIDR6 = "fd00:10:244::/48"

// Options shape a cluster.
type Options struct {
	// Prefix names the network namespaces (PREFIX-node-1, ...).
	Prefix string
	// Subnet is the underlay's first three octets, e.g. "192.168.77".
	Subnet string
	// Subnet6 is the underlay's IPv6 /64 prefix without the host part,
	// e.g. "fd00:77::".
	Subnet6 string
	// RootIf is the root namespace's interface on the underlay (where the
	// apiserver listens). At most 15 characters.
	RootIf string
	Nodes  int
	// RepoRoot is the repository (for deploy/daemonset.yaml).
	RepoRoot string
	// ToolsDir holds the control-plane binaries.
	ToolsDir string
	// Switchyard is the binary each node runs.
	Switchyard string
	// LogDir receives every component's log.
	LogDir string
	// ProxyArgs are extra switchyard flags.
	ProxyArgs []string
	// ProxyTee, if set, also receives node 1's switchyard output.
	ProxyTee io.Writer
}

// Cluster is a running local cluster.
type Cluster struct {
	Opts     Options
	CP       *ControlPlane
	Client   kubernetes.Interface
	Underlay *netns.Bridge
	Nodes    []*Node
	// External is a client outside the cluster, on the underlay.
	External *netns.NS
	// ExternalIP is the external client's address.
	ExternalIP string
	// External2 is a second outside client (for source ranges).
	External2   *netns.NS
	External2IP string
	// ExternalIP6 is the external client's IPv6 address.
	ExternalIP6 string
	owner       *Owner
}

// Node is one node: a network namespace running switchyard.
type Node struct {
	Name     string
	Zone     string
	Index    int
	PodCIDR  string
	PodCIDR6 string
	*netns.Node
	c *Cluster

	mu      sync.Mutex
	proxy   *Process
	nextPod int
}

// Start builds the whole cluster: underlay, control plane, nodes with their
// switchyard, RBAC from deploy/daemonset.yaml. It returns once every node's
// switchyard has programmed the kubernetes Service.
func Start(o *Owner, opts Options) *Cluster {
	c := &Cluster{Opts: opts, owner: o}
	if err := os.MkdirAll(opts.LogDir, 0o755); err != nil {
		o.Fatalf("%v", err)
	}
	c.Underlay = netns.NewBridge(o, opts.Prefix+"-underlay")
	apiIP := opts.Subnet + ".254"
	c.Underlay.Attach(o, netns.Root(o), opts.RootIf, apiIP+"/24")
	c.CP = StartControlPlane(o, ControlPlaneOptions{BindIP: apiIP, ToolsDir: opts.ToolsDir, LogDir: opts.LogDir})

	cfg, err := clientcmd.BuildConfigFromFlags("", c.CP.AdminKubeconfig)
	if err != nil {
		o.Fatalf("%v", err)
	}
	cfg.QPS, cfg.Burst = 200, 400
	c.Client = kubernetes.NewForConfigOrDie(cfg)
	if err := c.applyRBAC(); err != nil {
		o.Fatalf("applying RBAC from deploy/daemonset.yaml: %v", err)
	}

	gw := opts.Subnet + ".253" // nobody: unknown destinations die on the underlay
	for i := 1; i <= opts.Nodes; i++ {
		n := &Node{Name: fmt.Sprintf("node-%d", i), Index: i, Zone: []string{"zone-a", "zone-b"}[(i-1)%2],
			PodCIDR: fmt.Sprintf("10.244.%d.0/24", i), PodCIDR6: fmt.Sprintf("fd00:10:244:%d::/64", i), c: c}
		n.Node = netns.NewNodeOn(o, fmt.Sprintf("%s-node-%d", opts.Prefix, i), c.Underlay, fmt.Sprintf("%s.%d", opts.Subnet, i), gw)
		n.EnableIPv6(o, fmt.Sprintf("%s%d", opts.Subnet6, i), opts.Subnet6+"fd")
		c.Nodes = append(c.Nodes, n)
	}
	for _, n := range c.Nodes {
		for _, other := range c.Nodes {
			if other != n {
				n.MustRun("ip", "route", "add", other.PodCIDR, "via", other.IP)
				n.MustRun("ip", "-6", "route", "add", other.PodCIDR6, "via", other.IP6)
			}
		}
		if err := c.createNodeObject(n); err != nil {
			o.Fatalf("creating Node %s: %v", n.Name, err)
		}
	}
	c.ExternalIP = opts.Subnet + ".100"
	c.External = netns.NewNamed(o, opts.Prefix+"-external")
	c.Underlay.Attach(o, c.External, "eth0", c.ExternalIP+"/24")
	c.ExternalIP6 = opts.Subnet6 + "100"
	c.External.MustRun("ip", "-6", "addr", "add", c.ExternalIP6+"/64", "dev", "eth0", "nodad")
	c.External2IP = opts.Subnet + ".101"
	c.External2 = netns.NewNamed(o, opts.Prefix+"-external2")
	c.Underlay.Attach(o, c.External2, "eth0", c.External2IP+"/24")

	for i, n := range c.Nodes {
		var tee io.Writer
		if i == 0 {
			tee = opts.ProxyTee
		}
		if err := n.StartProxy(tee); err != nil {
			o.Fatalf("%v", err)
		}
		o.Cleanup(func() { _ = n.StopProxy() })
	}
	for _, n := range c.Nodes {
		if err := n.WaitProxySynced(60 * time.Second); err != nil {
			o.Fatalf("%v", err)
		}
		if err := n.WaitProgrammed("default/kubernetes:https cluster IP", 60*time.Second); err != nil {
			o.Fatalf("%v", err)
		}
	}
	return c
}

func (c *Cluster) applyRBAC() error { return ApplyRBAC(c.Client, c.Opts.RepoRoot) }

// ApplyRBAC creates the ServiceAccount, ClusterRole and binding of the
// repository's deploy/daemonset.yaml: what the proxy identity may do.
func ApplyRBAC(client kubernetes.Interface, repoRoot string) error {
	data, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "daemonset.yaml"))
	if err != nil {
		return err
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	ctx := context.Background()
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			return err
		}
		switch o := obj.(type) {
		case *rbacv1.ClusterRole:
			_, err = client.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRoleBinding:
			_, err = client.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
		case *v1.ServiceAccount:
			_, err = client.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
}

func (c *Cluster) createNodeObject(n *Node) error {
	ctx := context.Background()
	node := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{
			"kubernetes.io/hostname":      n.Name,
			"topology.kubernetes.io/zone": n.Zone,
		}},
		Spec: v1.NodeSpec{PodCIDR: n.PodCIDR, PodCIDRs: []string{n.PodCIDR, n.PodCIDR6}},
		Status: v1.NodeStatus{
			Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: n.IP}, {Type: v1.NodeInternalIP, Address: n.IP6},
				{Type: v1.NodeHostName, Address: n.Name}},
			Conditions: []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue, LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(), Reason: "E2E"}},
		},
	}
	created, err := c.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	created.Status = node.Status
	_, err = c.Client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{})
	return err
}

// RouteVia routes dst (an address or CIDR) from ns through node, as a
// router in front of a cluster sends externalIPs and load balancer IPs to a
// node. The route goes when the test ends.
func RouteVia(t netns.T, ns *netns.NS, dst string, node *Node) {
	t.Helper()
	if _, err := ns.Run("ip", "route", "replace", dst, "via", node.IP); err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { _, _ = ns.Run("ip", "route", "del", dst) })
}

// StartProxy starts this node's switchyard inside its namespace.
func (n *Node) StartProxy(tee io.Writer) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proxy != nil {
		if done, _ := n.proxy.Exited(); !done {
			return fmt.Errorf("switchyard already runs on %s", n.Name)
		}
	}
	args := append([]string{n.c.Opts.Switchyard,
		"--kubeconfig=" + n.c.CP.ProxyKubeconfig,
		"--hostname-override=" + n.Name,
		"--cluster-cidr=" + ClusterCIDR + "," + ClusterCIDR6,
		"--iptables-sync-period=5s",
		"--iptables-min-sync-period=50ms",
		"-v=2"}, n.c.Opts.ProxyArgs...)
	args = variantArgs(args)
	p, err := StartProcess("switchyard@"+n.Name, n.Command(args...), filepath.Join(n.c.Opts.LogDir, "switchyard-"+n.Name+".log"), tee)
	if err != nil {
		return err
	}
	n.proxy = p
	return nil
}

// StartProxyArgs starts this node's switchyard with exactly these
// arguments (a DaemonSet's command line), in place of the usual ones.
func (n *Node) StartProxyArgs(args ...string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proxy != nil {
		if done, _ := n.proxy.Exited(); !done {
			return fmt.Errorf("switchyard already runs on %s", n.Name)
		}
	}
	p, err := StartProcess("switchyard@"+n.Name, n.Command(append([]string{n.c.Opts.Switchyard}, args...)...),
		filepath.Join(n.c.Opts.LogDir, "switchyard-"+n.Name+".log"), nil)
	if err != nil {
		return err
	}
	n.proxy = p
	return nil
}

// StopProxy stops this node's switchyard (SIGTERM); its rules stay.
func (n *Node) StopProxy() error {
	n.mu.Lock()
	p := n.proxy
	n.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.Stop(15 * time.Second)
}

// StartKubeProxy runs upstream kube-proxy v1.36.3 (iptables mode, built by
// the tools module) in this node's namespace, beside switchyard, on other
// health and metrics ports. It is stopped at cleanup if still running.
func (n *Node) StartKubeProxy(t netns.T) *Process {
	t.Helper()
	p, err := StartProcess("kube-proxy@"+n.Name, n.Command(variantArgs([]string{filepath.Join(n.c.Opts.ToolsDir, "kube-proxy"),
		"--kubeconfig=" + n.c.CP.ProxyKubeconfig,
		"--hostname-override=" + n.Name,
		"--cluster-cidr=" + ClusterCIDR + "," + ClusterCIDR6,
		"--proxy-mode=iptables",
		"--conntrack-max-per-core=0", // the conntrack sysctls are not writable in a namespace
		"--healthz-bind-address=0.0.0.0:10266",
		"--metrics-bind-address=127.0.0.1:10259",
		"--iptables-sync-period=5s",
		"--v=2"})...), filepath.Join(n.c.Opts.LogDir, "kube-proxy-"+n.Name+".log"), nil)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { _ = p.Stop(10 * time.Second) })
	return p
}

// KillProxy kills this node's switchyard with SIGKILL.
func (n *Node) KillProxy() {
	n.mu.Lock()
	p := n.proxy
	n.mu.Unlock()
	if p != nil {
		p.Kill()
	}
}

// RestartProxy stops and starts this node's switchyard.
func (n *Node) RestartProxy() error {
	if err := n.StopProxy(); err != nil {
		return err
	}
	return n.StartProxy(nil)
}

// ProxyRunning reports whether the node's switchyard is running, and how it
// ended if not.
func (n *Node) ProxyRunning() (bool, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proxy == nil {
		return false, nil
	}
	done, err := n.proxy.Exited()
	return !done, err
}

// WaitProxySynced waits until the node's current switchyard process has
// completed its first full sync (it logs "Synced rules" with full=true).
func (n *Node) WaitProxySynced(timeout time.Duration) error {
	n.mu.Lock()
	p := n.proxy
	n.mu.Unlock()
	if p == nil {
		return fmt.Errorf("%s: switchyard was never started", n.Name)
	}
	var exited bool
	var exitErr error
	if wait.Poll(timeout, func() bool {
		if exited, exitErr = p.Exited(); exited {
			return true
		}
		for _, line := range strings.Split(p.Log(), "\n") {
			if strings.Contains(line, "Synced rules") && strings.Contains(line, "full=true") {
				return true
			}
		}
		return false
	}) && !exited {
		return nil
	}
	if exited {
		return fmt.Errorf("%s: switchyard exited (%v); see %s", n.Name, exitErr, p.LogPath)
	}
	return fmt.Errorf("%s: switchyard did not complete a full sync within %v; see %s", n.Name, timeout, p.LogPath)
}

// Save returns the node's iptables-save output for one table.
func (n *Node) Save(table string) (string, error) {
	return n.Run("iptables-save", "-t", table)
}

// Save6 is Save for ip6tables.
func (n *Node) Save6(table string) (string, error) {
	return n.Run("ip6tables-save", "-t", table)
}

// WaitProgrammed waits until the node's nat table holds a rule with the
// given comment text.
func (n *Node) WaitProgrammed(comment string, timeout time.Duration) error {
	var last string
	if wait.Poll(timeout, func() bool {
		if running, err := n.ProxyRunning(); !running {
			last = fmt.Sprintf("switchyard is not running (%v)", err)
			return true
		}
		out, err := n.Save("nat")
		last = out
		return err == nil && strings.Contains(out, comment)
	}) && strings.Contains(last, comment) {
		return nil
	}
	return fmt.Errorf("%s: rules for %q not programmed within %v: %s (log: %s)", n.Name, comment, timeout,
		firstLine(last), filepath.Join(n.c.Opts.LogDir, "switchyard-"+n.Name+".log"))
}

// WaitUnrouted waits until no node's nat table translates anything to the
// pod's addresses: every proxy has seen it go, so deleting its network can
// no longer lose a new connection. (A terminating pod is taken out of the
// rules as soon as a proxy syncs, but a proxy busy with the previous sync
// may take a while; a kubelet gives it the pod's grace period.)
func (c *Cluster) WaitUnrouted(t testing.TB, p *Pod) {
	t.Helper()
	targets := []string{"--to-destination " + p.IP + ":", "--to-destination [" + p.IP6 + "]:"}
	var where string
	ok := wait.Poll(Converge, func() bool {
		for _, n := range c.Nodes {
			for _, save := range []func(string) (string, error){n.Save, n.Save6} {
				out, err := save("nat")
				if err != nil {
					where = fmt.Sprintf("%s: %v", n.Name, err)
					return false
				}
				for _, target := range targets {
					if strings.Contains(out, target) {
						where = n.Name
						return false
					}
				}
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("pod %s (%s) is still a DNAT target on %s after %v", p.Name, p.IP, where, Converge)
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// Dump writes each node's iptables rules into dir, for failed tests.
func (c *Cluster) Dump(dir string) {
	_ = os.MkdirAll(dir, 0o755)
	for _, n := range c.Nodes {
		var b strings.Builder
		for _, table := range []string{"nat", "filter"} {
			out, err := n.Save(table)
			if err != nil {
				out = err.Error()
			}
			b.WriteString(out)
		}
		_ = os.WriteFile(filepath.Join(dir, "iptables-save-"+n.Name+".txt"), []byte(b.String()), 0o644)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var b strings.Builder
	if svcs, err := c.Client.CoreV1().Services("").List(ctx, metav1.ListOptions{}); err == nil {
		for _, s := range svcs.Items {
			fmt.Fprintf(&b, "service %s/%s %s %v\n", s.Namespace, s.Name, s.Spec.ClusterIP, s.Spec.Ports)
		}
	}
	if slices, err := c.Client.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{}); err == nil {
		for _, s := range slices.Items {
			fmt.Fprintf(&b, "endpointslice %s/%s ports=%v\n", s.Namespace, s.Name, s.Ports)
			for _, e := range s.Endpoints {
				fmt.Fprintf(&b, "  %v node=%v ready=%v serving=%v terminating=%v\n", e.Addresses, ptrStr(e.NodeName),
					ptrBool(e.Conditions.Ready), ptrBool(e.Conditions.Serving), ptrBool(e.Conditions.Terminating))
			}
		}
	}
	_ = os.WriteFile(filepath.Join(dir, "objects.txt"), []byte(b.String()), 0o644)
}

func ptrStr(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}

func ptrBool(p *bool) string {
	if p == nil {
		return "<nil>"
	}
	return fmt.Sprint(*p)
}

// variantArgs applies the environment's variant to a proxy's command line,
// the same for switchyard and kube-proxy, so the suite (and the side-by-side
// comparison above all) can run under other flags: E2E_PROXY_ARGS adds
// flags both proxies understand (e.g. "--masquerade-all"), and
// E2E_NO_CLUSTER_CIDR=1 drops --cluster-cidr (no local-traffic detection).
func variantArgs(args []string) []string {
	var out []string
	for _, a := range args {
		if os.Getenv("E2E_NO_CLUSTER_CIDR") != "" && strings.HasPrefix(a, "--cluster-cidr") {
			continue
		}
		out = append(out, a)
	}
	return append(out, strings.Fields(os.Getenv("E2E_PROXY_ARGS"))...)
}
