package e2e

import (
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
	request := func() error { _, err := cluster.Request(client.NS.NS, "tcp", addr); return err }

	t.Run("SIGKILL and restart: no request fails", func(t *testing.T) {
		load := netns.StartLoad(100000, request)
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
		load := netns.StartLoad(100000, request)
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
