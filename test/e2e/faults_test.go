package e2e

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/test/e2e/cluster"
	"github.com/switchyard-proxy/switchyard/test/netns"
	"github.com/switchyard-proxy/switchyard/test/wait"
)

// Faults with a steady request loop running through them. The figures are
// logged for the README's reliability section.
func TestFaultsUnderLoad(t *testing.T) {
	n := c.Nodes[0]
	ns := c.Namespace(t)
	pods := c.Deploy(t, ns, "steady", 2)
	svc := c.CreateService(t, ns, "steady", cluster.ServiceOptions{})
	client := c.StartPod(t, ns, cluster.PodOptions{Name: "client", Node: n})
	addr := cluster.Addr(svc, 80)
	cluster.ReachesAll(t, client.NS.NS, "tcp", addr, cluster.Names(pods))
	request := client.NS.LoadTCP(addr, cluster.RequestTimeout)

	t.Run("SIGKILL and restart: no request fails", func(t *testing.T) {
		load := netns.StartLoad(10000, request)
		for i := 0; i < 3; i++ {
			n.KillProxy()
			if err := n.StartProxy(nil); err != nil {
				t.Fatal(err)
			}
			if err := n.WaitProxySynced(cluster.Converge); err != nil {
				t.Fatal(err)
			}
		}
		requests, failures, firstErr := load.Stop()
		if failures > 0 {
			t.Fatalf("%d of %d requests failed across SIGKILL restarts: %v", failures, requests, firstErr)
		}
		t.Logf("SIGKILL x3: %d requests, 0 failed", requests)
	})

	t.Run("nat table flushed: detected and restored within the sync period", func(t *testing.T) {
		load := netns.StartLoad(10000, request)
		n.MustRun("iptables", "-t", "nat", "-F")
		start := time.Now()
		if !wait.Poll(cluster.Converge, func() bool {
			out, _ := n.Save("nat")
			return strings.Contains(out, ns+"/steady:http cluster IP") && strings.Contains(out, "-A PREROUTING -m comment --comment \"switchyard service portals\"")
		}) {
			t.Fatal("rules not restored after the flush")
		}
		took := time.Since(start)
		cluster.ReachesAll(t, client.NS.NS, "tcp", addr, cluster.Names(pods))
		requests, failures, _ := load.Stop()
		// The check runs every --iptables-sync-period (5 s here).
		if took > 2*5*time.Second {
			t.Errorf("restored after %v, more than twice the sync period", took)
		}
		t.Logf("nat flushed: restored after %v; %d of %d requests failed meanwhile", took.Round(100*time.Millisecond), failures, requests)
	})
}

// The node loses the API server for a minute (its connections are reset):
// traffic keeps flowing through the rules in place, and once the API server
// is reachable again the node converges quickly, including changes made
// while it was away, despite client-go's long reflector backoff.
func TestAPIServerAway(t *testing.T) {
	n := c.Nodes[0]
	ns := c.Namespace(t)
	pods := c.Deploy(t, ns, "stay", 2)
	stay := c.CreateService(t, ns, "stay", cluster.ServiceOptions{})
	c.CreateService(t, ns, "gone", cluster.ServiceOptions{Selector: map[string]string{"app": "stay"}})
	client := c.StartPod(t, ns, cluster.PodOptions{Name: "client", Node: n})
	cluster.ReachesAll(t, client.NS.NS, "tcp", cluster.Addr(stay, 80), cluster.Names(pods))
	if err := n.WaitProgrammed(ns+"/gone:http cluster IP", cluster.Converge); err != nil {
		t.Fatal(err)
	}

	u, err := url.Parse(c.CP.Server)
	if err != nil {
		t.Fatal(err)
	}
	// Both directions: a watch mostly receives.
	cuts := [][]string{
		{"OUTPUT", "-d", u.Hostname(), "-p", "tcp", "--dport", u.Port(), "-j", "REJECT", "--reject-with", "tcp-reset"},
		{"INPUT", "-s", u.Hostname(), "-p", "tcp", "--sport", u.Port(), "-j", "DROP"},
	}
	for _, cut := range cuts {
		n.MustRun(append([]string{"iptables", "-I"}, cut...)...)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			for _, cut := range cuts {
				n.MustRun(append([]string{"iptables", "-D"}, cut...)...)
			}
		}
	}
	defer restore()
	load := netns.StartLoad(20000, client.NS.LoadTCP(cluster.Addr(stay, 80), cluster.RequestTimeout))

	// Changes while the node cannot see them.
	if err := deleteService(ns, "gone"); err != nil {
		t.Fatal(err)
	}
	added := c.CreateService(t, ns, "added", cluster.ServiceOptions{Selector: map[string]string{"app": "stay"}})
	outage := time.Now()
	// A minute away, long enough for client-go's backoff to reach its cap.
	wait.Poll(60*time.Second, func() bool { return false })
	if out, _ := n.Save("nat"); strings.Contains(out, ns+"/added:http") || !strings.Contains(out, ns+"/gone:http") {
		t.Fatal("the node saw the API server during the outage; the cut did not work")
	}
	restore()
	back := time.Now()
	converged := func() bool {
		out, err := n.Save("nat")
		return err == nil && strings.Contains(out, ns+"/added:http cluster IP") && !strings.Contains(out, ns+"/gone:http")
	}
	if !wait.Poll(cluster.Converge, converged) {
		t.Fatalf("the node did not converge within %v of the API server's return", cluster.Converge)
	}
	took := time.Since(back)
	requests, failures, firstErr := load.Stop()
	t.Logf("API server away for %v: %d requests meanwhile, %d failed; converged %v after its return",
		back.Sub(outage).Round(time.Second), requests, failures, took.Round(100*time.Millisecond))
	if failures > 0 {
		t.Errorf("%d of %d requests failed while the API server was away: %v", failures, requests, firstErr)
	}
	if took > 10*time.Second {
		t.Errorf("converged %v after the API server's return, want within 10 s", took)
	}
	cluster.ReachesAll(t, client.NS.NS, "tcp", cluster.Addr(added, 80), cluster.Names(pods))
}
