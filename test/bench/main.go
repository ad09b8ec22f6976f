// Command bench is `make bench`: it compares switchyard with upstream
// kube-proxy (iptables and nftables modes, built by the e2e tools module)
// on identical network-namespace nodes against a real control plane, with
// real connections, at N Services x M endpoints, on both iptables backends.
// By default the endpoints are spread over 50 nodes as in a real cluster:
// the node under test holds a fiftieth of them (real pods answering there)
// and one more namespace answers for the other 49 nodes' pod addresses.
//
// Each (size, backend, proxy) phase gets a fresh node and the machine to
// itself, and a time cap: a measurement that does not finish within it is
// reported as over the cap. Every restore a proxy runs (iptables-restore,
// or nft -f) goes through a wrapper on its PATH that logs its input size
// and duration. The results
// are printed as one table and written as JSON under -out.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/switchyard-proxy/switchyard/test/e2e/cluster"
	"github.com/switchyard-proxy/switchyard/test/netns"
)

const (
	subnet   = "192.168.79"
	nodeIP   = subnet + ".1"
	nodeName = "bench-node"
	podNet   = "10.244.1"
	probeNS  = "probe"
)

type options struct {
	sizes     []int
	endpoints int
	// nodes is how many nodes the loaded Services' endpoints are spread
	// over (the node under test holds 1/nodes of them); 1 puts them all on
	// the node under test (-shape local).
	nodes      int
	churn      time.Duration
	massDelete bool
	liveLoad   bool
	backends   []string
	proxies    []string
	changes    int
	phaseCap   time.Duration
	out        string
	repo       string
	tools      string
	binary     string
	logs       string
	extra      []string // more switchyard flags, e.g. --profiling
}

func main() {
	var o options
	sizes := flag.String("sizes", "1000,10000", "Service counts to load, comma-separated")
	backends := flag.String("backends", "nft,legacy", "iptables backends, comma-separated")
	proxies := flag.String("proxies", "switchyard,kube-proxy,kube-proxy-nft", "proxies to compare, comma-separated: switchyard, kube-proxy (iptables mode), kube-proxy-nft (nftables mode; run once per size, on the nft backend's kernel)")
	flag.IntVar(&o.endpoints, "endpoints", 10, "endpoints per Service")
	flag.IntVar(&o.changes, "changes", 50, "timed changes per latency measurement")
	shape := flag.String("shape", "spread", "where the loaded endpoints are: spread (over -nodes nodes, as in a real cluster: the node under test holds 1/nodes of them, "+
		"the others answer from one namespace standing for the rest of the cluster) or local (all on the node under test)")
	flag.IntVar(&o.nodes, "nodes", 50, "with -shape spread: the nodes of the cluster")
	flag.BoolVar(&o.massDelete, "mass-delete", true, "measure the mass delete (the namespace controller deletes the loaded Services at its own pace; without it they are deleted 32 at a time after the phase)")
	flag.BoolVar(&o.liveLoad, "live-load", false, "start the proxy before the load and measure its CPU through it (the cold start is then the catch-up after the load's end)")
	flag.DurationVar(&o.churn, "churn", 3*time.Minute, "length of the churn phase (a steady 10 endpoint changes per second); 0 skips it")
	flag.DurationVar(&o.phaseCap, "phase-cap", 20*time.Minute, "time cap of one (size, backend, proxy) phase")
	flag.StringVar(&o.out, "out", "results", "folder for the JSON results")
	flag.StringVar(&o.repo, "repo", ".", "the repository root")
	flag.StringVar(&o.tools, "tools", "test/e2e/tools/bin", "kube-apiserver, kube-controller-manager and kube-proxy")
	flag.StringVar(&o.binary, "switchyard", "bin/switchyard", "the switchyard binary")
	flag.StringVar(&o.logs, "logs", "_output/bench", "component logs")
	extra := flag.String("switchyard-args", "", "more switchyard flags, space-separated (e.g. --profiling, to read /debug/pprof in the node)")
	report := flag.String("report", "", "only print the Markdown tables of these results files (comma-separated; phases run separately are put side by side)")
	flag.Parse()
	if *report != "" {
		var results []*Result
		for _, file := range strings.Split(*report, ",") {
			data, err := os.ReadFile(file)
			if err != nil {
				fail("%v", err)
			}
			var rs []*Result
			if err := json.Unmarshal(data, &rs); err != nil {
				fail("%s: %v", file, err)
			}
			results = append(results, rs...)
		}
		printMarkdown(os.Stdout, results)
		return
	}
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fail("bad -sizes %q", *sizes)
		}
		o.sizes = append(o.sizes, n)
	}
	o.extra = strings.Fields(*extra)
	switch *shape {
	case "local":
		o.nodes = 1
	case "spread":
		if o.nodes < 2 || o.nodes > maxNodes {
			fail("-nodes must be between 2 and %d", maxNodes)
		}
	default:
		fail("bad -shape %q: spread or local", *shape)
	}
	o.backends = strings.Split(*backends, ",")
	o.proxies = strings.Split(*proxies, ",")
	for _, p := range []*string{&o.repo, &o.tools, &o.binary, &o.logs, &o.out} {
		a, err := filepath.Abs(*p)
		if err != nil {
			fail("%v", err)
		}
		*p = a
	}
	if os.Geteuid() != 0 {
		fail("bench needs root (network namespaces, iptables)")
	}
	if msg := netns.Missing("iptables-legacy-restore", "iptables-nft-restore", "etcd"); msg != "" {
		fail("%s", msg)
	}
	if err := os.MkdirAll(o.logs, 0o755); err != nil {
		fail("%v", err)
	}

	owner := &cluster.Owner{}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		fmt.Fprintln(os.Stderr, "bench: interrupted; cleaning up")
		phaseMu.Lock()
		if phaseOwner != nil {
			phaseOwner.Close()
		}
		phaseMu.Unlock()
		owner.Close()
		os.Exit(130)
	}()
	var results []*Result
	err := owner.Catch(func() { results = run(owner, o) })
	owner.Close()
	if err != nil {
		fail("%v", err)
	}
	printTable(os.Stdout, results)
}

// phaseOwner holds the running phase's node, pods and proxy, for an
// interrupt to clean up.
var (
	phaseMu    sync.Mutex
	phaseOwner *cluster.Owner
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(1)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// env is what every phase shares: the underlay, the control plane, a client.
type env struct {
	o        options
	underlay *netns.Bridge
	cp       *cluster.ControlPlane
	client   kubernetes.Interface
	loads    int // namespaces loaded so far (each load uses a new one)
	nodes    int
	// remote stands for the cluster's other nodes: it answers on every
	// address of their pod CIDRs (nil with -shape local).
	remote *netns.NS
	// save writes the results so far; a phase calls it once measured,
	// before its clean-up (deleting 30,000 Services takes longer than
	// loading them, and a run stopped meanwhile keeps its numbers).
	save func()
}

func run(owner *cluster.Owner, o options) []*Result {
	e := &env{o: o}
	if _, err := netns.Root(owner).Run("ip", "link", "show", "swyb0"); err == nil {
		owner.Fatalf("swyb0 exists: another bench is running (or one was killed: ip link del swyb0; ip netns list | grep swyb)")
	}
	e.underlay = netns.NewBridge(owner, "swyb-underlay")
	e.underlay.Attach(owner, netns.Root(owner), "swyb0", subnet+".254/24")
	logf("starting the control plane")
	e.cp = cluster.StartControlPlane(owner, cluster.ControlPlaneOptions{BindIP: subnet + ".254", ToolsDir: o.tools, LogDir: o.logs})
	cfg, err := clientcmd.BuildConfigFromFlags("", e.cp.AdminKubeconfig)
	if err != nil {
		owner.Fatalf("%v", err)
	}
	cfg.QPS, cfg.Burst = 2000, 4000
	e.client = kubernetes.NewForConfigOrDie(cfg)
	if err := cluster.ApplyRBAC(e.client, o.repo); err != nil {
		owner.Fatalf("RBAC: %v", err)
	}
	e.createNode(owner)
	if o.nodes > 1 {
		e.remote = e.newRemote(owner)
	}
	e.createProbes(owner)

	if err := os.MkdirAll(o.out, 0o755); err != nil {
		owner.Fatalf("%v", err)
	}
	out := filepath.Join(o.out, time.Now().UTC().Format("2006-01-02T150405Z")+".json")
	var results []*Result
	e.save = func() {
		data, _ := json.MarshalIndent(results, "", "  ")
		if err := os.WriteFile(out, data, 0o644); err != nil {
			owner.Fatalf("%v", err)
		}
	}
	for _, size := range o.sizes {
		for _, backend := range o.backends {
			for _, proxy := range o.proxies {
				if proxy == "kube-proxy-nft" && backend != "nft" {
					continue // nftables mode uses no iptables backend: once per size, beside the nft one
				}
				r := &Result{Proxy: proxy, Backend: backend, Services: size, Endpoints: o.endpoints, Nodes: o.nodes,
					Machine: machine(), Started: time.Now().UTC()}
				results = append(results, r)
				po := &cluster.Owner{}
				phaseMu.Lock()
				phaseOwner = po
				phaseMu.Unlock()
				if err := po.Catch(func() { e.phase(po, r) }); err != nil {
					r.Error = err.Error()
					logf("phase %s/%s/%d failed: %v", proxy, backend, size, err)
				}
				po.Close()
				e.save()
				printTable(os.Stderr, results)
			}
		}
	}
	logf("results written to %s", out)
	return results
}

func (e *env) createNode(owner *cluster.Owner) {
	ctx := context.Background()
	node := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: nodeName, Labels: map[string]string{"kubernetes.io/hostname": nodeName}},
		Spec:       v1.NodeSpec{PodCIDR: podNet + ".0/24", PodCIDRs: []string{podNet + ".0/24"}},
	}
	created, err := e.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		owner.Fatalf("creating the Node: %v", err)
	}
	created.Status = v1.NodeStatus{
		Addresses:  []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: nodeIP}, {Type: v1.NodeHostName, Address: nodeName}},
		Conditions: []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue, LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}},
	}
	if _, err := e.client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		owner.Fatalf("Node status: %v", err)
	}
}

// Pods on every bench node: ten servers (the endpoints of every loaded
// Service), one more ("fresh", the target of every timed change) and a
// client.
func serverIP(i int) string { return fmt.Sprintf("%s.%d", podNet, 11+i) }

const (
	freshIP  = podNet + ".40"
	clientIP = podNet + ".50"
)

// createProbes makes the handful of Services present in every phase: the
// probe Service the connection rate is measured against, and eight more.
func (e *env) createProbes(owner *cluster.Owner) {
	e.createNamespace(owner, probeNS)
	for i := range 9 {
		if _, err := e.createService(probeNS, fmt.Sprintf("probe-%d", i), e.servers()); err != nil {
			owner.Fatalf("probe Service: %v", err)
		}
	}
}

// endpoint is one endpoint's address and the node it is on.
type endpoint struct{ addr, node string }

func local(addrs ...string) []endpoint {
	var out []endpoint
	for _, a := range addrs {
		out = append(out, endpoint{a, nodeName})
	}
	return out
}

// servers are the probe Services' endpoints: the ten server pods.
func (e *env) servers() []endpoint {
	var out []endpoint
	for i := range e.o.endpoints {
		out = append(out, endpoint{serverIP(i % 10), nodeName})
	}
	return out
}

// endpointsOf are loaded Service i's endpoints. Spread, they are dealt out
// over the nodes round-robin, so the node under test holds 1/nodes of them
// (server pods answering there) and the rest are on the other nodes, at
// addresses of their pod CIDRs the remote namespace answers on.
func (e *env) endpointsOf(i int) []endpoint {
	var out []endpoint
	for j := range e.o.endpoints {
		k := (i*e.o.endpoints + j) % e.o.nodes
		if k == 0 {
			out = append(out, endpoint{serverIP((i*e.o.endpoints + j) / e.o.nodes % 10), nodeName})
			continue
		}
		out = append(out, endpoint{fmt.Sprintf("10.244.%d.%d", remoteNet+k, 2+(i*e.o.endpoints+j)/e.o.nodes%250), fmt.Sprintf("bench-node-%d", k)})
	}
	return out
}

// The other nodes' pod CIDRs are 10.244.(remoteNet+k).0/24, all inside
// remoteCIDR, which the node routes to the remote namespace.
const (
	remoteNet  = 128
	remoteCIDR = "10.244.128.0/17"
	remoteIP   = subnet + ".252"
	maxNodes   = 128
)

// newRemote makes the namespace standing for the rest of the cluster: on
// the underlay, every address of remoteCIDR local to it (so one listener
// answers them all, as "remote"), its route back to the node's pods.
func (e *env) newRemote(owner *cluster.Owner) *netns.NS {
	ns := netns.NewNamed(owner, "swyb-remote")
	e.underlay.Attach(owner, ns, "eth0", remoteIP+"/24")
	ns.MustRun("ip", "route", "add", "local", remoteCIDR, "dev", "lo")
	ns.MustRun("ip", "route", "add", podNet+".0/24", "via", nodeIP)
	ns.ServeTCP(owner, ":8080", "remote")
	return ns
}

func (e *env) createNamespace(owner *cluster.Owner, name string) {
	_, err := e.client.CoreV1().Namespaces().Create(context.Background(), &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		owner.Fatalf("namespace %s: %v", name, err)
	}
}

// createService makes a selectorless Service on port 80 and its
// EndpointSlice with the given addresses (port 8080), and returns its
// ClusterIP.
func (e *env) createService(namespace, name string, addrs []endpoint) (string, error) {
	return e.createServiceAt(namespace, name, "", addrs)
}

// createServiceAt is createService with the ClusterIP given ("": the API
// server allocates one, as for a user's Service).
func (e *env) createServiceAt(namespace, name, clusterIP string, addrs []endpoint) (string, error) {
	ctx := context.Background()
	svc, err := e.client.CoreV1().Services(namespace).Create(ctx, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       v1.ServiceSpec{ClusterIP: clusterIP, Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	_, err = e.client.DiscoveryV1().EndpointSlices(namespace).Create(ctx, slice(namespace, name, addrs), metav1.CreateOptions{})
	return svc.Spec.ClusterIP, err
}

func slice(namespace, name string, addrs []endpoint) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: map[string]string{
			discovery.LabelServiceName: name, discovery.LabelManagedBy: "bench"}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{Addresses: []string{a.addr}, NodeName: ptr.To(a.node),
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)}})
	}
	return s
}

// load creates n Services in a new namespace, 32 at a time, and returns
// the namespace and their ClusterIPs by name.
func (e *env) load(owner *cluster.Owner, n int) (string, map[string]string) {
	e.loads++
	ns := fmt.Sprintf("bench-%d", e.loads)
	e.createNamespace(owner, ns)
	start := time.Now()
	ips := map[string]string{}
	var mu sync.Mutex
	var firstErr error
	work := make(chan int)
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				name := svcName(i)
				var ip string
				var err error
				for try := 0; try < 5; try++ {
					ip, err = e.createServiceAt(ns, name, loadIP(i), e.endpointsOf(i))
					if apierrors.IsInvalid(err) { // the address is taken: let the API server choose
						ip, err = e.createService(ns, name, e.endpointsOf(i))
					}
					if err == nil || apierrors.IsAlreadyExists(err) {
						break
					}
				}
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				ips[name] = ip
				mu.Unlock()
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		owner.Fatalf("loading Services: %v", firstErr)
	}
	logf("loaded %d Services x %d endpoints (over %d nodes) into %s in %v", n, e.o.endpoints, e.o.nodes, ns, time.Since(start).Round(time.Second))
	return ns, ips
}

func svcName(i int) string { return fmt.Sprintf("svc-%05d", i) }

// loadIP is the ClusterIP the load gives its i-th Service: the loaded
// Services' addresses are scattered over the Service range as the API
// server's random allocation scatters them, but chosen here, because the
// API server's own choice takes it seconds per Service while 32 are being
// created (at 20,000 Services: about 2 s, against 10-30 ms for a given
// address), which made loading 30,000 Services take half an hour. The
// timed new Services still have their addresses allocated. "" (allocate)
// for the range's network, first and broadcast addresses.
func loadIP(i int) string {
	host := uint32(i)*40503 + 4099 // an odd factor: distinct low bits for 2^bits consecutive i
	bits := 32 - serviceCIDR.Bits()
	host &= 1<<bits - 1
	if host < 2 || host == 1<<bits-1 {
		return ""
	}
	base := serviceCIDR.Addr().As4()
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], binary.BigEndian.Uint32(base[:])|host)
	return netip.AddrFrom4(a).String()
}

var serviceCIDR = netip.MustParsePrefix(cluster.ServiceCIDR)
