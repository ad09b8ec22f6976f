package main

import (
	"context"
	"fmt"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/switchyard-proxy/switchyard/test/e2e/cluster"
	"github.com/switchyard-proxy/switchyard/test/netns"
)

// Result is one phase's measurements. Durations are in seconds; a negative
// value means the measurement hit the phase's time cap.
type Result struct {
	Proxy     string    `json:"proxy"`
	Backend   string    `json:"backend"`
	Services  int       `json:"services"`
	Endpoints int       `json:"endpointsPerService"`
	Nodes     int       `json:"nodes,omitempty"` // the endpoints are spread over this many nodes (0 or 1: all local)
	Machine   string    `json:"machine"`
	Started   time.Time `json:"started"`
	Error     string    `json:"error,omitempty"`

	ColdStart float64 `json:"coldStartSeconds"`
	// Latencies of single changes, seconds, each timed from the API call
	// until a real connection reaches the new state.
	NewService     []float64 `json:"newServiceToTrafficSeconds"`
	EndpointChange []float64 `json:"endpointChangeToTrafficSeconds"`
	// The part of each new Service's time spent in the API server: from
	// the Service's create call until its EndpointSlice's create returned
	// (the proxy cannot act on the Service before the first has returned).
	NewServiceAPI []float64 `json:"newServiceApiSeconds,omitempty"`
	// Restores during the endpoint changes, per change.
	RestoreBytesPerChange   float64 `json:"restoreBytesPerChange"`
	RestoreSecondsPerChange float64 `json:"restoreSecondsPerChange"`
	// Connections per second from a pod to a ClusterIP.
	ConnRateHandful float64 `json:"connectionsPerSecondHandful"`
	ConnRateLoaded  float64 `json:"connectionsPerSecondLoaded"`
	// The churn phase: a steady stream of endpoint changes for a few
	// minutes; the proxy's CPU (with its children) as a percentage of one
	// core, and timed changes made meanwhile.
	ChurnSeconds       float64   `json:"churnSeconds,omitempty"`
	ChurnChangesPerSec float64   `json:"churnChangesPerSecond,omitempty"`
	ChurnCPUPercent    float64   `json:"churnCpuPercent,omitempty"`
	ChurnRestores      int       `json:"churnRestores,omitempty"`
	ChurnLatency       []float64 `json:"churnChangeToTrafficSeconds,omitempty"`
	// Mass delete of all N Services.
	MassDeleteTotal    float64 `json:"massDeleteSeconds"`
	MassDeleteLongest  float64 `json:"massDeleteLongestRestoreSeconds"`
	MassDeleteRestores int     `json:"massDeleteRestores"`
	ChangeDuringDelete float64 `json:"changeDuringDeleteSeconds"`
	MassDeleteCPU      float64 `json:"massDeleteCpuSeconds"`
	// Resources of the proxy process, CPU with its iptables/nft children.
	CPULoadSeconds float64 `json:"cpuSecondsToColdStart"`
	IdleCPUPercent float64 `json:"idleCpuPercent"`
	PeakRSSMB      float64 `json:"peakRssMB"`
	// The size of what the proxy programmed, after the cold start: nat
	// rules and chains (iptables), or the rules and chains of kube-proxy's
	// nftables table.
	NATRules    int     `json:"natRules,omitempty"`
	NATChains   int     `json:"natChains,omitempty"`
	LoadSeconds float64 `json:"apiLoadSeconds"`
	// LiveLoad: the proxy ran through the load (-live-load); ColdStart is
	// then the time from the load's end until every probed Service
	// answered, and CPULoadSeconds the proxy's CPU from its start (before
	// the load) until then.
	LiveLoad bool `json:"liveLoad,omitempty"`
}

// bnode is one bench node: a namespace with pods, its restore log.
type bnode struct {
	*netns.Node
	client *netns.Pod
	bin    string // the PATH directory with the backend's wrappers
	log    string // the restore log
}

func (e *env) newNode(po *cluster.Owner, backend string) *bnode {
	e.nodes++
	n := &bnode{Node: netns.NewNodeOn(po, fmt.Sprintf("swyb-node-%d", e.nodes), e.underlay, nodeIP, subnet+".253")}
	// A connection to a ClusterIP no rule catches is reset at once (DNATed
	// traffic no longer has a Service address by FORWARD), so a probe
	// fails in milliseconds: with no route, or an unreachable one, TCP
	// would only give up after retransmitting its SYN a second later.
	n.MustRun("iptables-"+backend, "-A", "FORWARD", "-d", cluster.ServiceCIDR, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset")
	if e.remote != nil {
		n.MustRun("ip", "route", "add", remoteCIDR, "via", remoteIP)
		// The node before this one had the same address and another MAC.
		e.remote.MustRun("ip", "neigh", "flush", "dev", "eth0")
	}
	for i := range 10 {
		p := n.AddPod(po, serverIP(i))
		p.ServeTCP(po, ":8080", fmt.Sprintf("server-%d", i))
	}
	fresh := n.AddPod(po, freshIP)
	fresh.ServeTCP(po, ":8080", "fresh")
	n.client = n.AddPod(po, clientIP)
	dir, err := os.MkdirTemp("", "swyb-bin")
	if err != nil {
		po.Fatalf("%v", err)
	}
	po.Cleanup(func() { os.RemoveAll(dir) })
	n.bin, n.log = dir, filepath.Join(dir, "restores.log")
	if err := writeWrappers(dir, backend, n.log); err != nil {
		po.Fatalf("%v", err)
	}
	return n
}

// writeWrappers fills dir with the backend's iptables tools under their
// plain names (kube-proxy runs "iptables-restore"), and wraps every
// restore so it logs "START END BYTES EXIT" (nanoseconds) per run.
func writeWrappers(dir, backend, log string) error {
	for _, fam := range []string{"iptables", "ip6tables"} {
		real := func(tool string) string { return "/usr/sbin/" + fam + "-" + backend + tool }
		for _, tool := range []string{"", "-save"} {
			if err := os.Symlink(real(tool), filepath.Join(dir, fam+tool)); err != nil {
				return err
			}
		}
		script := timedScript("", real("-restore"), log)
		for _, name := range []string{fam + "-restore", fam + "-" + backend + "-restore"} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
				return err
			}
		}
	}
	// kube-proxy's nftables mode writes each transaction with "nft -f -"
	// (and dry-runs some with --check first): those runs are its restores.
	nft := timedScript(`case " $* " in
*" --check "*) exec /usr/sbin/nft "$@" ;;
*" -f "*) ;;
*) exec /usr/sbin/nft "$@" ;;
esac
`, "/usr/sbin/nft", log)
	return os.WriteFile(filepath.Join(dir, "nft"), []byte(nft), 0o755)
}

// timedScript is a bash wrapper that runs first (which may exec the real
// tool untimed), then runs real with its arguments and its input, and
// appends "START END BYTES EXIT" (nanoseconds, input size) to log.
func timedScript(first, real, log string) string {
	return "#!/bin/bash\n" + first + fmt.Sprintf(`f=$(mktemp)
cat > "$f"
t0=$(date +%%s%%N)
%s "$@" < "$f"
rc=$?
t1=$(date +%%s%%N)
echo "$t0 $t1 $(stat -c%%s "$f") $rc" >> %s
rm -f "$f"
exit $rc
`, real, log)
}

type restoreRun struct {
	start, end time.Time
	bytes      int
}

func (n *bnode) restores(since time.Time) []restoreRun {
	data, _ := os.ReadFile(n.log)
	var out []restoreRun
	for _, line := range strings.Split(string(data), "\n") {
		var t0, t1 int64
		var b, rc int
		if _, err := fmt.Sscan(line, &t0, &t1, &b, &rc); err != nil {
			continue
		}
		r := restoreRun{start: time.Unix(0, t0), end: time.Unix(0, t1), bytes: b}
		if !r.start.Before(since) {
			out = append(out, r)
		}
	}
	return out
}

// startProxy runs the proxy in the node with the wrappers first on PATH. It
// returns the process and its stop function, which stops it once however
// often it is called (a second kill of the process group could hit a group
// that has since reused the number).
func (e *env) startProxy(po *cluster.Owner, n *bnode, proxy, backend string) (*cluster.Process, func()) {
	var args []string
	switch proxy {
	case "switchyard":
		args = []string{e.o.binary, "--kubeconfig=" + e.cp.ProxyKubeconfig, "--hostname-override=" + nodeName,
			"--cluster-cidr=10.244.0.0/16", "--iptables-backend=" + backend, "--healthz-bind-address=", "--metrics-bind-address=127.0.0.1:10249", "-v=1"}
		args = append(args, e.o.extra...)
	case "kube-proxy", "kube-proxy-nft":
		mode := "iptables"
		if proxy == "kube-proxy-nft" {
			mode = "nftables"
		}
		args = []string{filepath.Join(e.o.tools, "kube-proxy"), "--kubeconfig=" + e.cp.ProxyKubeconfig, "--hostname-override=" + nodeName,
			"--cluster-cidr=10.244.0.0/16", "--proxy-mode=" + mode, "--conntrack-max-per-core=0",
			"--healthz-bind-address=0.0.0.0:10266", "--metrics-bind-address=127.0.0.1:10259", "--v=1"}
	default:
		po.Fatalf("unknown proxy %q", proxy)
	}
	cmd := n.Command(append([]string{"env", "PATH=" + n.bin + ":/usr/sbin:/usr/bin:/sbin:/bin"}, args...)...)
	p, err := cluster.StartProcess(proxy, cmd, filepath.Join(e.o.logs, fmt.Sprintf("%s-%s-%d.log", proxy, backend, e.nodes)), nil)
	if err != nil {
		po.Fatalf("%v", err)
	}
	stop := sync.OnceFunc(func() { stopProxy(p) })
	po.Cleanup(stop)
	return p, stop
}

// stopProxy stops the proxy and then everything left in its process group:
// an iptables-restore it started keeps running after it exits, and would
// load the machine during the next phase.
func stopProxy(p *cluster.Process) {
	_ = p.Stop(30 * time.Second)
	_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
}

// reaches reports whether a new connection from the client to addr is
// answered by want ("" for anyone). The timeout is short on purpose: a SYN
// refused with an ICMP error (a REJECT for a Service without endpoints) is
// only retransmitted after a second, which would hide when the rules
// changed; a connection inside one node completes in a few milliseconds.
func (n *bnode) reaches(addr, want string) bool {
	a, err := n.client.GetTCP(addr, probeTimeout)
	return err == nil && (want == "" || a.Server == want)
}

const probeTimeout = 100 * time.Millisecond

// waitUntil polls cond every 5 ms until it holds or the deadline passes,
// and returns the time it took (negative: deadline).
func waitUntil(start, deadline time.Time, cond func() bool) float64 {
	for {
		if cond() {
			return time.Since(start).Seconds()
		}
		if time.Now().After(deadline) {
			return -1
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// connRate opens new connections to addr from the client for d, with
// four workers, and returns the completed connections per second.
func (n *bnode) connRate(addr string, d time.Duration) float64 {
	var done atomic.Int64
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = n.client.Do(func() error {
				buf := make([]byte, 64)
				for time.Now().Before(stop) {
					c, err := net.DialTimeout("tcp", addr, time.Second)
					if err != nil {
						continue
					}
					_ = c.SetDeadline(time.Now().Add(time.Second))
					if _, err := c.Read(buf); err == nil {
						done.Add(1)
					}
					c.Close()
				}
				return nil
			})
		}()
	}
	wg.Wait()
	return float64(done.Load()) / d.Seconds()
}

func (e *env) phase(po *cluster.Owner, r *Result) {
	deadline := time.Now().Add(e.o.phaseCap)
	ctx := context.Background()
	logf("phase %s on %s, %d Services", r.Proxy, r.Backend, r.Services)
	probe := e.clusterIP(po, probeNS, "probe-0")

	// The connection rate with a handful of Services, on its own node.
	{
		n := e.newNode(po, r.Backend)
		p, stop := e.startProxy(po, n, r.Proxy, r.Backend)
		if waitUntil(time.Now(), deadline, func() bool { return n.reaches(probe, "") }) < 0 {
			po.Fatalf("the probe Service never answered (log: %s)", p.LogPath)
		}
		r.ConnRateHandful = n.connRate(probe, 5*time.Second)
		logf("  %.0f connections/s with a handful of Services", r.ConnRateHandful)
		stop()
	}

	// With -live-load the proxy runs through the load, as on a node of a
	// cluster being filled: its CPU over the load is measured, and the
	// "cold start" is the time from the load's end until all answer.
	var n *bnode
	var p *cluster.Process
	stop := func() {}
	var cpuAtStart float64
	if e.o.liveLoad {
		n = e.newNode(po, r.Backend)
		p, stop = e.startProxy(po, n, r.Proxy, r.Backend)
		cpuAtStart = cpuSeconds(p.Pid())
		r.LiveLoad = true
	}
	start := time.Now()
	ns, ips := e.load(po, r.Services)
	r.LoadSeconds = time.Since(start).Seconds()
	// However the phase ends, the next one starts without these Services;
	// the proxy is stopped first: a proxy over the cap must not keep a
	// core busy while the next phase is prepared.
	deleted := false
	defer func() {
		stop()
		e.save()
		if !deleted {
			e.emptyNamespace(ns)
			_ = e.client.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
		}
		e.waitNamespaceGone(po, ns)
	}()

	if !e.o.liveLoad {
		n = e.newNode(po, r.Backend)
		p, stop = e.startProxy(po, n, r.Proxy, r.Backend)
	}
	pid := p.Pid()
	start = time.Now()
	// Cold start: the probe, the first, the last and 20 random Services
	// all answer.
	names := []string{svcName(0), svcName(r.Services - 1)}
	for range 20 {
		names = append(names, svcName(rand.Intn(r.Services)))
	}
	r.ColdStart = waitUntil(start, deadline, func() bool {
		if !n.reaches(probe, "") {
			return false
		}
		for _, name := range names {
			if !n.reaches(ips[name]+":80", "") {
				return false
			}
		}
		return true
	})
	r.CPULoadSeconds = cpuSeconds(pid) - cpuAtStart
	r.NATRules, r.NATChains = n.tableSize(r.Proxy, r.Backend)
	logf("  %d rules in %d chains", r.NATRules, r.NATChains)
	logf("  cold start %.1fs, %.1f CPU s, peak RSS so far %.0f MB", r.ColdStart, r.CPULoadSeconds, peakRSS(pid))
	if r.ColdStart < 0 {
		r.PeakRSSMB = peakRSS(pid)
		return
	}

	// Idle: ten quiet seconds.
	c0 := cpuSeconds(pid)
	idleStart := time.Now()
	time.Sleep(10 * time.Second) // a fixed measurement window, not a wait for a condition
	r.IdleCPUPercent = 100 * (cpuSeconds(pid) - c0) / time.Since(idleStart).Seconds()

	// New Service to traffic.
	for i := range e.o.changes {
		if time.Now().After(deadline) {
			break
		}
		t0 := time.Now()
		ip, err := e.createService(ns, fmt.Sprintf("new-%03d", i), local(freshIP))
		if err != nil {
			po.Fatalf("creating a Service: %v", err)
		}
		api := time.Since(t0).Seconds()
		d := waitUntil(t0, deadline, func() bool { return n.reaches(ip+":80", "fresh") })
		r.NewService = append(r.NewService, d)
		r.NewServiceAPI = append(r.NewServiceAPI, api)
		logf("    new-%03d: created at %s, API %.3fs, traffic %.3fs", i, t0.UTC().Format("15:04:05.000"), api, d)
	}
	logf("  new Service to traffic: p50 %s p99 %s (the API's two creates: p50 %s)", fmtSec(pct(r.NewService, 50)), fmtSec(pct(r.NewService, 99)),
		fmtSec(pct(r.NewServiceAPI, 50)))

	// Endpoint change to traffic: a loaded Service's ten endpoints become
	// the one fresh pod.
	changeStart := time.Now()
	changed := 0
	for i := range e.o.changes {
		if time.Now().After(deadline) {
			break
		}
		name := svcName((i * 7919) % r.Services)
		t0 := time.Now()
		_, err := e.client.DiscoveryV1().EndpointSlices(ns).Update(ctx, slice(ns, name, local(freshIP)), metav1.UpdateOptions{})
		if err != nil {
			po.Fatalf("updating an EndpointSlice: %v", err)
		}
		d := waitUntil(t0, deadline, func() bool { return n.reaches(ips[name]+":80", "fresh") })
		r.EndpointChange = append(r.EndpointChange, d)
		changed++
	}
	runs := n.restores(changeStart)
	if changed > 0 {
		var bytes int
		var secs float64
		for _, run := range runs {
			bytes += run.bytes
			secs += run.end.Sub(run.start).Seconds()
		}
		r.RestoreBytesPerChange = float64(bytes) / float64(changed)
		r.RestoreSecondsPerChange = secs / float64(changed)
	}
	logf("  endpoint change to traffic: p50 %s p99 %s; %.0f restore bytes and %.3fs per change",
		fmtSec(pct(r.EndpointChange, 50)), fmtSec(pct(r.EndpointChange, 99)), r.RestoreBytesPerChange, r.RestoreSecondsPerChange)

	r.ConnRateLoaded = n.connRate(probe, 5*time.Second)
	r.PeakRSSMB = peakRSS(pid)
	logf("  %.0f connections/s with %d Services; peak RSS so far %.0f MB", r.ConnRateLoaded, r.Services, r.PeakRSSMB)

	if e.o.churn > 0 {
		e.churnPhase(po, r, n, pid, ns, deadline)
	}
	if !e.o.massDelete {
		return
	}

	// Mass delete: the loaded namespace goes; a second later a new Service
	// is created elsewhere, and must reach the node meanwhile.
	e.createNamespace(po, "during")
	delStart := time.Now()
	delCPU := cpuSeconds(pid)
	if err := e.client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
		po.Fatalf("deleting %s: %v", ns, err)
	}
	deleted = true
	var during float64 = -1
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		time.Sleep(time.Second) // the change comes one second into the delete, by design
		t0 := time.Now()
		ip, err := e.createService("during", fmt.Sprintf("during-%d", e.nodes), local(freshIP))
		if err != nil {
			return
		}
		during = waitUntil(t0, deadline, func() bool { return n.reaches(ip+":80", "fresh") })
	}()
	r.MassDeleteTotal = waitUntil(delStart, deadline, func() bool {
		for _, name := range names {
			if n.reaches(ips[name]+":80", "") {
				return false
			}
		}
		return true
	})
	r.MassDeleteCPU = cpuSeconds(pid) - delCPU
	wg.Wait()
	r.ChangeDuringDelete = during
	for _, run := range n.restores(delStart) {
		r.MassDeleteRestores++
		r.MassDeleteLongest = max(r.MassDeleteLongest, run.end.Sub(run.start).Seconds())
	}
	if r.MassDeleteTotal < 0 {
		// Still restoring: the longest restore is at least as long as the
		// one running now.
		r.MassDeleteLongest = -1
	}
	logf("  mass delete %s (%d restores, longest %s, %.1f CPU s); a change meanwhile took %s",
		fmtSec(r.MassDeleteTotal), r.MassDeleteRestores, fmtSec(r.MassDeleteLongest), r.MassDeleteCPU, fmtSec(r.ChangeDuringDelete))
	r.PeakRSSMB = max(r.PeakRSSMB, peakRSS(pid))
	logf("  peak RSS %.0f MB", r.PeakRSSMB)
}

// churnPhase changes a random loaded Service's endpoints ten times a
// second for -churn (each change drops or restores its first endpoint),
// and every five seconds times a change of its own Service to traffic.
func (e *env) churnPhase(po *cluster.Owner, r *Result, n *bnode, pid int, ns string, deadline time.Time) {
	ctx := context.Background()
	ip, err := e.createService(ns, "churn-probe", local(serverIP(0)))
	if err != nil {
		po.Fatalf("creating the churn probe: %v", err)
	}
	if waitUntil(time.Now(), deadline, func() bool { return n.reaches(ip+":80", "server-0") }) < 0 {
		return
	}
	stop := time.Now().Add(e.o.churn)
	if stop.After(deadline) {
		stop = deadline
	}
	start := time.Now()
	cpu0 := cpuSeconds(pid)
	var changes atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		rng := rand.New(rand.NewSource(1))
		dropped := map[int]bool{}
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for time.Now().Before(stop) {
			<-tick.C
			i := rng.Intn(r.Services)
			eps := e.endpointsOf(i)
			if dropped[i] = !dropped[i]; dropped[i] {
				eps = eps[1:]
			}
			if _, err := e.client.DiscoveryV1().EndpointSlices(ns).Update(ctx, slice(ns, svcName(i), eps), metav1.UpdateOptions{}); err == nil {
				changes.Add(1)
			}
		}
	}()
	target, want := freshIP, "fresh"
	for time.Now().Add(5 * time.Second).Before(stop) {
		time.Sleep(5 * time.Second) // the pace of the timed changes, not a wait for a condition
		t0 := time.Now()
		if _, err := e.client.DiscoveryV1().EndpointSlices(ns).Update(ctx, slice(ns, "churn-probe", local(target)), metav1.UpdateOptions{}); err != nil {
			po.Fatalf("updating the churn probe: %v", err)
		}
		r.ChurnLatency = append(r.ChurnLatency, waitUntil(t0, deadline, func() bool { return n.reaches(ip+":80", want) }))
		if target == freshIP {
			target, want = serverIP(0), "server-0"
		} else {
			target, want = freshIP, "fresh"
		}
	}
	<-done
	r.ChurnSeconds = time.Since(start).Seconds()
	r.ChurnCPUPercent = 100 * (cpuSeconds(pid) - cpu0) / r.ChurnSeconds
	r.ChurnChangesPerSec = float64(changes.Load()) / r.ChurnSeconds
	r.ChurnRestores = len(n.restores(start))
	logf("  churn: %.1f changes/s for %.0f s: CPU %.0f%% of a core, %d restores; a change meanwhile p50 %s p99 %s",
		r.ChurnChangesPerSec, r.ChurnSeconds, r.ChurnCPUPercent, r.ChurnRestores, fmtSec(pct(r.ChurnLatency, 50)), fmtSec(pct(r.ChurnLatency, 99)))
}

// tableSize counts the rules and chains the proxy programmed: the nat
// table's, or kube-proxy's nftables table's.
func (n *bnode) tableSize(proxy, backend string) (rules, chains int) {
	if proxy == "kube-proxy-nft" {
		out, _ := n.Run("nft", "-a", "list", "table", "ip", "kube-proxy")
		for _, line := range strings.Split(out, "\n") {
			t := strings.TrimSpace(line)
			switch {
			case strings.HasPrefix(t, "chain "):
				chains++
			case strings.Contains(t, "# handle") && !strings.HasPrefix(t, "table ") && !strings.HasPrefix(t, "set ") && !strings.HasPrefix(t, "map "):
				rules++
			}
		}
		return rules, chains
	}
	out, _ := n.Run("iptables-"+backend+"-save", "-t", "nat")
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, "-A "):
			rules++
		case strings.HasPrefix(line, ":"):
			chains++
		}
	}
	return rules, chains
}

func (e *env) clusterIP(po *cluster.Owner, ns, name string) string {
	svc, err := e.client.CoreV1().Services(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		po.Fatalf("%v", err)
	}
	return svc.Spec.ClusterIP + ":80"
}

// emptyNamespace deletes the namespace's EndpointSlices in one call and its
// Services 32 at a time: the namespace controller deletes Services one by
// one at its own pace (minutes for 30,000), which a phase that does not
// measure the mass delete need not wait for.
func (e *env) emptyNamespace(ns string) {
	ctx := context.Background()
	_ = e.client.DiscoveryV1().EndpointSlices(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	list, err := e.client.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	work := make(chan string)
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range work {
				_ = e.client.CoreV1().Services(ns).Delete(ctx, name, metav1.DeleteOptions{})
			}
		}()
	}
	for _, svc := range list.Items {
		work <- svc.Name
	}
	close(work)
	wg.Wait()
}

// waitNamespaceGone waits (up to ten minutes) for a deleted namespace to
// be gone, so the next phase starts from the same API state.
func (e *env) waitNamespaceGone(po *cluster.Owner, ns string) {
	deadline := time.Now().Add(10 * time.Minute)
	for {
		_, err := e.client.CoreV1().Namespaces().Get(context.Background(), ns, metav1.GetOptions{})
		if err != nil {
			return
		}
		if time.Now().After(deadline) {
			po.Fatalf("namespace %s still exists after ten minutes", ns)
		}
		time.Sleep(time.Second)
	}
}

// cpuSeconds is the user and system CPU time so far of the process and of
// its children it has waited for (its iptables-restore or nft runs).
func cpuSeconds(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	var sum float64
	for _, field := range f[11:15] { // utime, stime, cutime, cstime
		var v float64
		_, _ = fmt.Sscan(field, &v) // a field that does not parse counts 0
		sum += v
	}
	return sum / 100 // USER_HZ
}

// peakRSS is the process's peak resident memory (VmHWM) in MB.
func peakRSS(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			var kb float64
			_, _ = fmt.Sscan(strings.TrimSpace(strings.TrimPrefix(line, "VmHWM:")), &kb) // 0 if unreadable
			return kb / 1024
		}
	}
	return 0
}

// pct is the p-th percentile of the values; a capped (negative) value
// counts as the largest.
func pct(values []float64, p float64) float64 {
	if len(values) == 0 {
		return 0
	}
	v := append([]float64(nil), values...)
	for i := range v {
		if v[i] < 0 {
			v[i] = 1e18
		}
	}
	sort.Float64s(v)
	x := v[min(len(v)-1, int(float64(len(v))*p/100))]
	if x >= 1e18 {
		return -1
	}
	return x
}

func fmtSec(s float64) string {
	switch {
	case s < 0:
		return "over cap"
	case s == 0:
		return "-"
	case s < 1:
		return fmt.Sprintf("%.0f ms", s*1000)
	}
	return fmt.Sprintf("%.1f s", s)
}
