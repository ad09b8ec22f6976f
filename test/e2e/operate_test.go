package e2e

import (
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/test/e2e/cluster"
	"github.com/switchyard-proxy/switchyard/test/wait"
)

// scrape reads node's /metrics from inside its namespace and returns the
// value of every sample whose name and labels start with prefix, summed.
func scrape(t *testing.T, n *cluster.Node, prefix string) float64 {
	t.Helper()
	_, body, err := n.HTTPGet("http://127.0.0.1:10249/metrics", 2*time.Second)
	if err != nil {
		t.Fatalf("scraping %s: %v", n.Name, err)
	}
	sum := 0.0
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, prefix) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

func TestHealthAndMetricsEndpoints(t *testing.T) {
	n := c.Nodes[0]
	// /healthz on kube-proxy's port, from outside the node.
	resp, body, err := c.External.HTTPGet("http://"+n.IP+":10256/healthz", 2*time.Second)
	if err != nil || resp.StatusCode != 200 || !strings.Contains(string(body), `"nodeEligible":true`) {
		t.Fatalf("/healthz: %v %v %s", resp, err, body)
	}
	if resp, _, err := n.HTTPGet("http://127.0.0.1:10256/livez", 2*time.Second); err != nil || resp.StatusCode != 200 {
		t.Fatalf("/livez: %v %v", resp, err)
	}

	moves := []string{
		`kubeproxy_sync_proxy_rules_service_changes_total`,
		`kubeproxy_sync_proxy_rules_endpoint_changes_total`,
		`kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"}`,
		`kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"}`,
		`kubeproxy_network_programming_duration_seconds_count{ip_family="IPv4"}`,
		`switchyard_syncs_total{ip_family="IPv4",kind="partial"}`,
		`switchyard_chains_written_total{ip_family="IPv4"}`,
	}
	before := map[string]float64{}
	for _, m := range moves {
		before[m] = scrape(t, n, m)
	}
	const (
		latencyCount = `kubeproxy_network_programming_duration_seconds_count{ip_family="IPv4"}`
		latencyUnder = `kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="59"}`
	)
	countBefore, underBefore := scrape(t, n, latencyCount), scrape(t, n, latencyUnder)

	// A Service with an endpoint only on node-2 and externalTrafficPolicy
	// Local: node-1 has no local endpoint for it.
	ns := c.Namespace(t)
	pod := c.StartPod(t, ns, cluster.PodOptions{Name: "m-1", Labels: map[string]string{"app": "m"}, Node: c.Nodes[1]})
	svc := c.CreateService(t, ns, "m", cluster.ServiceOptions{Mutate: func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	}})
	cluster.ReachesAll(t, n.NS, "tcp", cluster.Addr(svc, 80), []string{pod.Name})
	for _, m := range moves {
		if !wait.Poll(cluster.Converge, func() bool { return scrape(t, n, m) > before[m] }) {
			t.Errorf("%s did not move (stayed %v)", m, before[m])
		}
	}
	// Gauges reflect the node as it is (other tests' namespaces may be
	// going away meanwhile, so they need not grow).
	if !wait.Poll(cluster.Converge, func() bool {
		return scrape(t, n, `kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family="IPv4",traffic_policy="external"}`) >= 1
	}) {
		t.Error("no_local_endpoints_total{external} never counted the Service without a local endpoint")
	}
	if !wait.Poll(cluster.Converge, func() bool {
		out, err := n.Save("nat")
		if err != nil {
			return false
		}
		live := float64(strings.Count(out, "\n-A SWY-"))
		return scrape(t, n, `kubeproxy_sync_proxy_rules_iptables_total{ip_family="IPv4",table="nat"}`) == live
	}) {
		t.Error("iptables_total{nat} does not match the node's own nat rules")
	}
	// Network programming latency is a real figure: this test's changes
	// reached the node well within a minute. (Earlier tests may have left
	// longer observations: one keeps the node away from the API server for
	// a minute.)
	count := scrape(t, n, latencyCount) - countBefore
	under := scrape(t, n, latencyUnder) - underBefore
	if count == 0 || under < count {
		t.Errorf("network programming latency: %v of this test's %v observations under 59s", under, count)
	}

	// /debug endpoints.
	_, body, err = n.HTTPGet("http://127.0.0.1:10249/debug/services/"+ns+"/m", 2*time.Second)
	if err != nil || !strings.Contains(string(body), pod.IP) || !strings.Contains(string(body), ns+"/m:http") {
		t.Errorf("/debug/services: %v %s", err, body)
	}
	_, body, err = n.HTTPGet("http://127.0.0.1:10249/debug/rules", 2*time.Second)
	if err != nil || !strings.Contains(string(body), `"applied"`) {
		t.Errorf("/debug/rules: %v %.300s", err, body)
	}
}

func TestExplainOnALiveNode(t *testing.T) {
	ns := c.Namespace(t)
	pods := c.Deploy(t, ns, "ex", 2)
	svc := c.CreateService(t, ns, "ex", cluster.ServiceOptions{})
	client := c.StartPod(t, ns, cluster.PodOptions{Name: "client", Node: c.Nodes[0]})
	cluster.ReachesAll(t, client.NS.NS, "tcp", cluster.Addr(svc, 80), cluster.Names(pods))

	out, err := c.Nodes[0].Run(c.Opts.Switchyard, "explain", "--from", client.IP, "--to", cluster.Addr(svc, 80), "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Endpoints []string `json:"endpoints"`
		Summary   string   `json:"summary"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("explain -o json: %v\n%s", err, out)
	}
	var want []string
	for _, p := range pods {
		want = append(want, p.IP+":8080")
	}
	sort.Strings(want)
	if fmt.Sprint(got.Endpoints) != fmt.Sprint(want) {
		t.Errorf("explain on the live node: endpoints %v, want %v (%s)", got.Endpoints, want, got.Summary)
	}
	// And in words, for a Service without endpoints.
	empty := c.CreateService(t, ns, "nobody-here", cluster.ServiceOptions{})
	cluster.Refused(t, client.NS.NS, cluster.Addr(empty, 80))
	out, err = c.Nodes[0].Run(c.Opts.Switchyard, "explain", "--from", client.IP, "--to", cluster.Addr(empty, 80))
	if err != nil || !regexp.MustCompile(`rejected: .*`+ns+`/nobody-here:http has no endpoints`).MatchString(out) {
		t.Errorf("explain text: %v\n%s", err, out)
	}
}

func TestRulesAndDiffOnALiveNode(t *testing.T) {
	ns := c.Namespace(t)
	pods := c.Deploy(t, ns, "rd", 2)
	svc := c.CreateService(t, ns, "rd", cluster.ServiceOptions{})
	n := c.Nodes[1]
	cluster.ReachesAll(t, n.NS, "tcp", cluster.Addr(svc, 80), cluster.Names(pods))

	out, err := n.Run(c.Opts.Switchyard, "rules", ns+"/rd")
	if err != nil || !strings.Contains(out, ns+"/rd:http cluster IP") || !strings.Contains(out, pods[0].IP+":8080") {
		t.Errorf("rules: %v\n%s", err, out)
	}
	diff := func() string {
		out, err := n.Run(c.Opts.Switchyard, "diff", "--kubeconfig", c.CP.ProxyKubeconfig, "--hostname-override", n.Name,
			"--cluster-cidr", cluster.ClusterCIDR+","+cluster.ClusterCIDR6)
		if err != nil {
			t.Fatalf("diff: %v\n%s", err, out)
		}
		return out
	}
	// Tests running beside this one change Services too: the node's rules
	// match the API once the daemon has applied what they changed last.
	var last string
	if !wait.Poll(cluster.Converge, func() bool { last = diff(); return strings.Contains(last, "No differences") }) {
		t.Errorf("diff on a synced node:\n%s", last)
	}
	// With switchyard stopped, a new Service is a pending change.
	if err := n.StopProxy(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.StartProxy(nil); err != nil {
			t.Error(err)
		}
		if err := n.WaitProxySynced(cluster.Converge); err != nil {
			t.Error(err)
		}
	})
	pending := c.CreateService(t, ns, "pending", cluster.ServiceOptions{Selector: map[string]string{"app": "rd"}})
	want := ns + "/pending:http cluster IP"
	if !wait.Poll(cluster.Converge, func() bool { return strings.Contains(diff(), want) }) {
		t.Errorf("diff never showed the pending Service %s", cluster.Addr(pending, 80))
	}
	if out := diff(); !strings.Contains(out, "(new)") || !strings.Contains(out, "+ -A SWY-SERVICES") {
		t.Errorf("diff output:\n%s", out)
	}
	// diff changed nothing.
	cluster.NoAnswer(t, n.NS, cluster.Addr(pending, 80))
}

// A restore that the kernel refuses: someone's rule jumps into one of our
// endpoint chains, so deleting that chain fails. The failure is counted,
// /debug/rules shows it, and the next (full) sync removes the foreign jump
// and recovers, while traffic keeps flowing.
func TestRestoreFailureIsCountedAndRecovered(t *testing.T) {
	n := c.Nodes[0]
	ns := c.Namespace(t)
	pods := c.Deploy(t, ns, "rf", 2)
	svc := c.CreateService(t, ns, "rf", cluster.ServiceOptions{})
	client := c.StartPod(t, ns, cluster.PodOptions{Name: "client", Node: n})
	addr := cluster.Addr(svc, 80)
	cluster.ReachesAll(t, client.NS.NS, "tcp", addr, cluster.Names(pods))

	out, err := n.Save("nat")
	if err != nil {
		t.Fatal(err)
	}
	sep := regexp.MustCompile(`-A (SWY-SEP-\S+) .*DNAT --to-destination ` + regexp.QuoteMeta(pods[0].IP) + `:8080`).FindStringSubmatch(out)
	if sep == nil {
		t.Fatalf("no endpoint chain for %s", pods[0].IP)
	}
	n.MustRun("iptables", "-t", "nat", "-A", "OUTPUT", "-d", "192.0.2.1/32", "-m", "comment", "--comment", "someone else", "-j", sep[1])
	failures := scrape(t, n, `kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family="IPv4"}`)
	full := scrape(t, n, `switchyard_syncs_total{ip_family="IPv4",kind="full"}`)
	deleted := scrape(t, n, `switchyard_chains_deleted_total{ip_family="IPv4"}`)

	pods[0].Delete(t)
	if !wait.Poll(cluster.Converge, func() bool {
		return scrape(t, n, `kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family="IPv4"}`) > failures
	}) {
		t.Fatal("the refused restore was not counted")
	}
	_, body, _ := n.HTTPGet("http://127.0.0.1:10249/debug/rules", 2*time.Second)
	if !strings.Contains(string(body), `"failed"`) || !strings.Contains(string(body), sep[1]) {
		t.Errorf("/debug/rules does not show the failed batch:\n%.500s", body)
	}
	if !wait.Poll(cluster.Converge, func() bool {
		return scrape(t, n, `switchyard_syncs_total{ip_family="IPv4",kind="full"}`) > full &&
			scrape(t, n, `switchyard_chains_deleted_total{ip_family="IPv4"}`) > deleted
	}) {
		t.Fatal("no full sync recovered")
	}
	cluster.OnlyReaches(t, client.NS.NS, "tcp", addr, []string{pods[1].Name}, 10)
	if out, _ := n.Save("nat"); strings.Contains(out, sep[1]) {
		t.Errorf("the foreign jump to the deleted chain %s survived the full sync", sep[1])
	}
}

func TestMoreMetricsMove(t *testing.T) {
	n := c.Nodes[0]
	metricsThatMove := []string{
		`kubeproxy_proxy_healthz_total{code="200"}`,
		`kubeproxy_proxy_livez_total{code="200"}`,
		`kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family="IPv4"}`,
		`switchyard_sync_restore_bytes_count{ip_family="IPv4"}`,
		`kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family="IPv4"}`,
	}
	before := map[string]float64{}
	for _, m := range metricsThatMove {
		before[m] = scrape(t, n, m)
	}
	for _, path := range []string{"/healthz", "/livez"} {
		if _, _, err := n.HTTPGet("http://127.0.0.1:10256"+path, 2*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	ns := c.Namespace(t)
	// internalTrafficPolicy Local with the only endpoint on node-2.
	c.StartPod(t, ns, cluster.PodOptions{Name: "far", Labels: map[string]string{"app": "far"}, Node: c.Nodes[1]})
	c.CreateService(t, ns, "far", cluster.ServiceOptions{Mutate: func(s *v1.Service) {
		s.Spec.InternalTrafficPolicy = ptrTo(v1.ServiceInternalTrafficPolicyLocal)
	}})
	// A UDP flow whose endpoint is replaced: its conntrack entry is deleted.
	a := c.StartPod(t, ns, cluster.PodOptions{Name: "u-a", Labels: map[string]string{"app": "u"}, Node: c.Nodes[1]})
	udp := c.CreateService(t, ns, "u", cluster.ServiceOptions{Ports: []v1.ServicePort{cluster.DNSPort}})
	session, err := n.DialUDP(cluster.Addr(udp, 53))
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	askUntil(t, session, "answered by u-a", answeredBy("u-a"))
	c.StartPod(t, ns, cluster.PodOptions{Name: "u-b", Labels: map[string]string{"app": "u"}, Node: c.Nodes[1]})
	a.Delete(t)
	askUntil(t, session, "answered by u-b", answeredBy("u-b"))

	for _, m := range metricsThatMove {
		if !wait.Poll(cluster.Converge, func() bool { return scrape(t, n, m) > before[m] }) {
			t.Errorf("%s did not move (stayed %v)", m, before[m])
		}
	}
	if !wait.Poll(cluster.Converge, func() bool {
		return scrape(t, n, `kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family="IPv4",traffic_policy="internal"}`) >= 1
	}) {
		t.Error("no_local_endpoints_total{internal} never counted the Service without a local endpoint")
	}
}

func ptrTo[T any](v T) *T { return &v }
