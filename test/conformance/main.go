// Command conformance is `make conformance`: it runs upstream Kubernetes'
// own e2e tests (e2e.test v1.36.3, by default `[sig-network] Services`)
// against a real two-node cluster built on this machine, with switchyard
// or upstream kube-proxy as every node's service proxy.
//
// The cluster: etcd, kube-apiserver, kube-controller-manager (every
// controller) and kube-scheduler as local processes; two nodes, each a
// network namespace on an underlay bridge with its own containerd and its
// own kubelet v1.36.3, pods networked by the CNI ptp and host-local
// plugins; CoreDNS behind the kube-dns Service; and the proxy under test
// as its DaemonSet (host-network pods with their ServiceAccount's token),
// or as a process in each node's namespaces (--proxy-as=process).
// Every image the specs run is built here from the Kubernetes module and
// Debian's programs and imported into each containerd: no registry.
//
// Everything is torn down at the end, after a failure and on Ctrl-C; what
// a killed run left is removed at the next start.
package main

import (
	"context"
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/switchyard-proxy/switchyard/test/e2e/cluster"
	"github.com/switchyard-proxy/switchyard/test/netns"
)

const (
	prefix      = "swy-cf"
	subnet      = "192.168.80"
	clusterCIDR = "10.244.0.0/16"
	apiServerIP = "10.96.0.1" // the kubernetes Service
)

type options struct {
	repo, switchyard, tools, pause string
	proxy, proxyAs                 string
	focus, skip                    string
	procs, nodes                   int
	logs, reports                  string
	timeout                        time.Duration
	hold, teardown                 bool
}

func main() {
	var o options
	flag.StringVar(&o.repo, "repo", ".", "the repository root")
	flag.StringVar(&o.switchyard, "switchyard", "bin/switchyard", "the switchyard binary")
	flag.StringVar(&o.tools, "tools", "test/e2e/tools/bin", "the Kubernetes programs (make e2e-tools)")
	flag.StringVar(&o.pause, "pause", "bin/pause", "the pause program (./test/conformance/pause)")
	flag.StringVar(&o.proxy, "proxy", "switchyard", "the service proxy every node runs: switchyard or kube-proxy")
	flag.StringVar(&o.proxyAs, "proxy-as", "daemonset", "how the proxy runs: daemonset (its own DaemonSet), kubeadm (kubeadm's kube-proxy DaemonSet with the proxy's image) or process (a process in each node's namespaces)")
	flag.StringVar(&o.focus, "focus", `\[sig-network\] Services`, "ginkgo focus regexp")
	flag.StringVar(&o.skip, "skip", "", "ginkgo skip regexp")
	flag.IntVar(&o.procs, "procs", 4, "ginkgo parallel processes ([Serial] specs still run alone)")
	flag.IntVar(&o.nodes, "nodes", 3, "how many nodes (one spec needs 3)")
	flag.StringVar(&o.logs, "logs", "_output/conformance", "where component logs go")
	flag.StringVar(&o.reports, "reports", "artifacts/conformance", "where the JUnit report and ginkgo's output go")
	flag.DurationVar(&o.timeout, "timeout", 90*time.Minute, "ginkgo's suite timeout")
	flag.BoolVar(&o.hold, "hold", false, "build the cluster, print how to use it and wait for Ctrl-C instead of running the specs")
	flag.BoolVar(&o.teardown, "teardown", false, "only remove what an earlier, killed run left behind")
	flag.Parse()
	if o.proxy != "switchyard" && o.proxy != "kube-proxy" {
		fail("--proxy must be switchyard or kube-proxy, not %q", o.proxy)
	}
	if o.proxyAs != "daemonset" && o.proxyAs != "kubeadm" && o.proxyAs != "process" {
		fail("--proxy-as must be daemonset, kubeadm or process, not %q", o.proxyAs)
	}
	if o.nodes < 1 || o.nodes > 9 {
		fail("--nodes must be between 1 and 9")
	}
	if os.Geteuid() != 0 {
		fail("must run as root (network namespaces, containerd, kubelet)")
	}
	if o.teardown {
		teardownHost()
		os.Exit(0)
	}
	if msg := netns.Missing("iptables", "etcd", "containerd", "runc", "ctr", "nsenter", "ldd", "busybox"); msg != "" {
		fail("%s (make setup installs them)", msg)
	}
	for _, p := range []*string{&o.repo, &o.switchyard, &o.tools, &o.pause, &o.logs, &o.reports} {
		a, err := filepath.Abs(*p)
		if err != nil {
			fail("%v", err)
		}
		*p = a
	}
	for _, bin := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl", "kube-proxy", "agnhost", "coredns", "ginkgo", "e2e.test"} {
		if _, err := os.Stat(filepath.Join(o.tools, bin)); err != nil && (!o.hold || bin != "ginkgo" && bin != "e2e.test") {
			fail("%s is missing: run make e2e-tools", filepath.Join(o.tools, bin))
		}
	}
	for _, d := range []string{o.logs, o.reports} {
		_ = os.RemoveAll(d)
		if err := os.MkdirAll(d, 0o755); err != nil {
			fail("%v", err)
		}
	}
	os.Exit(run(o))
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "conformance: "+format+"\n", args...)
	os.Exit(2)
}

// run builds the cluster, runs ginkgo and tears everything down; its
// result is the exit status.
func run(o options) int {
	if err := prepare(); err != nil {
		fmt.Fprintf(os.Stderr, "conformance: %v\n", err)
		return 1
	}
	owner := &cluster.Owner{}
	var once sync.Once
	teardown := func() {
		once.Do(func() {
			fmt.Println("conformance: tearing down...")
			owner.Close()
			teardownHost()
			fmt.Println("conformance: torn down")
		})
	}
	defer teardown()

	// Ctrl-C (or SIGTERM) at any point: stop ginkgo, tear down, exit 130.
	var ginkgo struct {
		sync.Mutex
		cmd *exec.Cmd
	}
	interrupted := make(chan struct{})
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		close(interrupted)
		fmt.Println("\nconformance: interrupted")
		ginkgo.Lock()
		if ginkgo.cmd != nil && ginkgo.cmd.Process != nil {
			_ = syscall.Kill(-ginkgo.cmd.Process.Pid, syscall.SIGKILL)
		}
		ginkgo.Unlock()
		teardown()
		os.Exit(130)
	}()

	var c *conformanceCluster
	start := time.Now()
	err := owner.Catch(func() { c = startCluster(owner, o) })
	if err != nil {
		fmt.Fprintf(os.Stderr, "conformance: building the cluster: %v (logs in %s)\n", err, o.logs)
		return 1
	}
	fmt.Printf("conformance: cluster up in %s: %d nodes, %s on each\n", time.Since(start).Round(time.Second), o.nodes, o.proxy)
	if o.hold {
		fmt.Printf("conformance: holding the cluster; Ctrl-C tears it down.\n  export KUBECONFIG=%s PATH=%s:$PATH\n  logs: %s\n",
			c.cp.AdminKubeconfig, o.tools, o.logs)
		<-interrupted
		select {}
	}

	junit := filepath.Join(o.reports, "junit.xml")
	cmd := ginkgoCommand(o, c.cp.AdminKubeconfig)
	fmt.Printf("conformance: %s\n", strings.Join(cmd.Args, " "))
	ginkgo.Lock()
	startErr := cmd.Start()
	ginkgo.cmd = cmd
	ginkgo.Unlock()
	if startErr != nil {
		fmt.Fprintf(os.Stderr, "conformance: %v\n", startErr)
		return 1
	}
	runErr := cmd.Wait()
	select {
	case <-interrupted:
		select {} // the signal handler tears down and exits
	default:
	}
	if err := c.check(); err != nil {
		fmt.Fprintf(os.Stderr, "conformance: a component died during the run: %v\n", err)
	}
	if s, err := summarize(junit); err == nil {
		fmt.Printf("conformance: %s with %s: %s\nconformance: JUnit report: %s\n", o.focus, o.proxy, s, junit)
		_ = os.WriteFile(filepath.Join(o.reports, "summary.txt"), []byte(s+"\n"), 0o644)
	} else {
		fmt.Fprintf(os.Stderr, "conformance: reading the JUnit report: %v\n", err)
	}
	if runErr != nil {
		var ee *exec.ExitError
		if errors.As(runErr, &ee) {
			return ee.ExitCode()
		}
		return 1
	}
	return 0
}

// ginkgoCommand runs e2e.test through ginkgo with the run's focus, skip
// and parallelism, against the cluster's admin kubeconfig.
func ginkgoCommand(o options, kubeconfig string) *exec.Cmd {
	args := []string{
		"--procs=" + fmt.Sprint(o.procs),
		"--focus=" + o.focus,
		"--junit-report=junit.xml",
		"--output-dir=" + o.reports,
		"--timeout=" + o.timeout.String(),
		"--no-color",
		"--silence-skips",
	}
	if o.skip != "" {
		args = append(args, "--skip="+o.skip)
	}
	args = append(args, filepath.Join(o.tools, "e2e.test"), "--",
		"--kubeconfig="+kubeconfig,
		"--provider=skeleton",
		"--kubectl-path="+filepath.Join(o.tools, "kubectl"),
		"--dns-domain=cluster.local",
		"--minStartupPods=0",
		"--allowed-not-ready-nodes=0",
		// Without it only ginkgo's first process learns the node count;
		// specs that need two nodes skip at random on the others.
		"--num-nodes="+fmt.Sprint(o.nodes),
		"--node-schedulable-timeout=2m",
	)
	cmd := exec.Command(filepath.Join(o.tools, "ginkgo"), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "PATH="+o.tools+":"+os.Getenv("PATH"))
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

// conformanceCluster is what startCluster built.
type conformanceCluster struct {
	cp     *cluster.ControlPlane
	client kubernetes.Interface
	nodes  []*kubeNode
	dnsNS  *netns.NS
	logDir string
}

func (c *conformanceCluster) check() error {
	if err := c.cp.Check(); err != nil {
		return err
	}
	for _, n := range c.nodes {
		for _, p := range []*cluster.Process{n.containerd, n.kubelet, n.proxy} {
			if p == nil {
				continue // the proxy runs as pods
			}
			if done, err := p.Exited(); done {
				return fmt.Errorf("%s exited (%v); see %s", p.Name, err, p.LogPath)
			}
		}
	}
	return nil
}

// startCluster builds the whole cluster and returns once every node is
// Ready and its proxy has programmed the kubernetes Service.
func startCluster(o *cluster.Owner, opts options) *conformanceCluster {
	var names []string
	for i := 1; i <= opts.nodes; i++ {
		names = append(names, fmt.Sprintf("node-%d", i))
	}
	underlay := netns.NewBridge(o, prefix+"-underlay")
	apiIP := subnet + ".254"
	underlay.Attach(o, netns.Root(o), prefix+"0", apiIP+"/24")
	cp := cluster.StartControlPlane(o, cluster.ControlPlaneOptions{BindIP: apiIP, ToolsDir: opts.tools, LogDir: opts.logs, Kubelets: names, Dir: baseDir})
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.AdminKubeconfig)
	if err != nil {
		o.Fatalf("%v", err)
	}
	c := &conformanceCluster{cp: cp, client: kubernetes.NewForConfigOrDie(cfg), logDir: opts.logs}
	if err := cluster.ApplyRBAC(c.client, opts.repo); err != nil {
		o.Fatalf("applying RBAC from deploy/daemonset.yaml: %v", err)
	}
	imgs, err := buildImages(filepath.Join(baseDir, "images"), opts.tools, opts.pause)
	if err != nil {
		o.Fatalf("building images: %v", err)
	}
	if opts.proxyAs != "process" {
		name, bin := switchyardImage, opts.switchyard
		if opts.proxy == "kube-proxy" {
			name, bin = kubeProxyImage, filepath.Join(opts.tools, "kube-proxy")
		}
		img, err := buildProxyImage(filepath.Join(baseDir, "images"), name, "proxy.tar", bin, "/usr/local/bin/"+opts.proxy)
		if err != nil {
			o.Fatalf("building the proxy's image: %v", err)
		}
		imgs = append(imgs, img)
	}

	c.makeNodes(o, underlay, names)
	if err := startDNS(o, c.client, c.dnsNS, subnet+dnsSuffix, opts.tools, cp.AdminKubeconfig, baseDir, opts.logs); err != nil {
		o.Fatalf("%v", err)
	}
	var proxyKubeconfig string
	if opts.proxyAs == "process" {
		proxyKubeconfig = c.processProxyIdentity(o, opts.proxy)
	}
	for _, n := range c.nodes {
		n := n
		if err := createNode(c.client, n); err != nil {
			o.Fatalf("creating Node %s: %v", n.Name, err)
		}
		if err := os.MkdirAll(n.Dir, 0o755); err != nil {
			o.Fatalf("%v", err)
		}
		if err := n.makeUTS(); err != nil {
			o.Fatalf("%v", err)
		}
		o.Cleanup(func() { n.stop() })
		if opts.proxyAs == "process" {
			if err := n.startProxy(opts.proxy, opts.switchyard, opts.tools, proxyKubeconfig); err != nil {
				o.Fatalf("%v", err)
			}
		}
		if err := n.startRuntime(imgs); err != nil {
			o.Fatalf("%v", err)
		}
		if err := n.startKubelet(cp, opts.tools, clusterDNSIP); err != nil {
			o.Fatalf("%v", err)
		}
	}
	if err := waitNodesReady(c.client, c.nodes, 3*time.Minute); err != nil {
		o.Fatalf("%v", err)
	}
	if opts.proxyAs != "process" {
		c.deployProxy(o, opts)
	}
	for _, n := range c.nodes {
		if err := n.waitProxyProgrammed(apiServerIP, 60*time.Second); err != nil {
			o.Fatalf("%v", err)
		}
	}
	return c
}

// makeNodes creates the nodes' network namespaces on the underlay and the
// DNS server's, with routes to every pod CIDR from everywhere on the
// underlay that pods talk to (the apiserver's root namespace, the DNS
// server, the other nodes).
func (c *conformanceCluster) makeNodes(o *cluster.Owner, underlay *netns.Bridge, names []string) {
	gw := subnet + ".253" // nobody: unknown destinations die on the underlay
	for i, name := range names {
		n := &kubeNode{Name: name, Index: i + 1, PodCIDR: fmt.Sprintf("10.244.%d.0/24", i+1),
			Dir: filepath.Join(baseDir, name), logDir: c.logDir}
		n.Node = netns.NewNodeOn(o, fmt.Sprintf("%s-%s", prefix, name), underlay, fmt.Sprintf("%s.%d", subnet, i+1), gw)
		c.nodes = append(c.nodes, n)
	}
	c.dnsNS = netns.NewNamed(o, prefix+"-dns")
	underlay.Attach(o, c.dnsNS, "eth0", subnet+dnsSuffix+"/24")
	for _, n := range c.nodes {
		for _, other := range c.nodes {
			if other != n {
				n.MustRun("ip", "route", "add", other.PodCIDR, "via", other.IP)
			}
		}
		c.dnsNS.MustRun("ip", "route", "add", n.PodCIDR, "via", n.IP)
		netns.Root(o).MustRun("ip", "route", "add", n.PodCIDR, "via", n.IP, "dev", prefix+"0")
	}
}

// processProxyIdentity gives a proxy run as a process the identity its
// DaemonSet's pods would have: a kubeconfig with a token of
// deploy/daemonset.yaml's ServiceAccount (and, for kube-proxy, its own
// role bound to that account, as its DaemonSets bind it).
func (c *conformanceCluster) processProxyIdentity(o *cluster.Owner, proxy string) string {
	if proxy == "kube-proxy" {
		if _, err := c.client.RbacV1().ClusterRoleBindings().Create(context.Background(), &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "conformance:node-proxier"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:node-proxier"},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "switchyard", Namespace: "kube-system"}},
		}, metav1.CreateOptions{}); err != nil {
			o.Fatalf("binding system:node-proxier: %v", err)
		}
	}
	path := filepath.Join(baseDir, "proxy.kubeconfig")
	if err := writeServiceAccountKubeconfig(c.client, c.cp.Server, path); err != nil {
		o.Fatalf("%v", err)
	}
	return path
}

// deployProxy applies the proxy's DaemonSet and waits for its pods.
func (c *conformanceCluster) deployProxy(o *cluster.Owner, opts options) {
	host, port, err := net.SplitHostPort(strings.TrimPrefix(c.cp.Server, "https://"))
	if err != nil {
		o.Fatalf("%v", err)
	}
	image := switchyardImage
	if opts.proxy == "kube-proxy" {
		image = kubeProxyImage
	}
	manifest := kubeProxyDaemonSet(host, port, image)
	if opts.proxy == "switchyard" && opts.proxyAs == "daemonset" {
		if manifest, err = switchyardDaemonSet(opts.repo, host, port); err != nil {
			o.Fatalf("%v", err)
		}
	}
	if err := applyManifest(filepath.Join(opts.tools, "kubectl"), c.cp.AdminKubeconfig, manifest); err != nil {
		o.Fatalf("deploying the %s DaemonSet: %v", opts.proxy, err)
	}
	o.Cleanup(func() { saveProxyLogs(c.client, opts.logs, opts.proxy) })
	if err := waitProxyPods(c.client, len(c.nodes), 2*time.Minute); err != nil {
		o.Fatalf("%v", err)
	}
}

// stop stops the node's kubelet first (so it restarts nothing), then its
// proxy and containerd; the containers themselves go with the node's
// cgroups in teardownHost.
func (n *kubeNode) stop() {
	for _, p := range []*cluster.Process{n.kubelet, n.proxy, n.containerd} {
		if p != nil {
			_ = p.Stop(15 * time.Second)
		}
	}
}

// writeServiceAccountKubeconfig writes a kubeconfig for the proxy's
// ServiceAccount (kube-system/switchyard from deploy/daemonset.yaml) with a
// token from the TokenRequest API, as a DaemonSet pod would hold.
func writeServiceAccountKubeconfig(client kubernetes.Interface, server, path string) error {
	expiry := int64(24 * 3600)
	tr, err := client.CoreV1().ServiceAccounts("kube-system").CreateToken(context.Background(), "switchyard",
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: &expiry}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("requesting a token for kube-system/switchyard: %w", err)
	}
	return os.WriteFile(path, []byte(cluster.Kubeconfig(server, tr.Status.Token)), 0o600)
}

// summarize reads the JUnit report: the specs the focus selected (the
// report lists every spec of the suite; those filtered out are "skipped"
// with no reason), each with its outcome, and the counts.
func summarize(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	var suites struct {
		Suites []struct {
			Cases []struct {
				Name    string `xml:"name,attr"`
				Status  string `xml:"status,attr"`
				Skipped *struct {
					Message string `xml:"message,attr"`
				} `xml:"skipped"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(b, &suites); err != nil {
		return "", err
	}
	var passed, failed, skipped int
	var lines []string
	for _, s := range suites.Suites {
		for _, tc := range s.Cases {
			name, ok := strings.CutPrefix(tc.Name, "[It] ")
			if !ok {
				continue // suite set-up and reporting nodes
			}
			switch {
			case tc.Status == "skipped" && (tc.Skipped == nil || tc.Skipped.Message == "skipped"):
				continue // not selected
			case tc.Status == "skipped":
				skipped++
				lines = append(lines, "SKIPPED "+name+" ("+strings.TrimPrefix(tc.Skipped.Message, "skipped - ")+")")
			case tc.Status == "passed":
				passed++
				lines = append(lines, "PASSED  "+name)
			default:
				failed++
				lines = append(lines, "FAILED  "+name)
			}
		}
	}
	sort.Strings(lines)
	return fmt.Sprintf("%d passed, %d failed, %d skipped\n  %s", passed, failed, skipped, strings.Join(lines, "\n  ")), nil
}
