package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
	"github.com/switchyard-proxy/switchyard/test/e2e/cluster"
	"github.com/switchyard-proxy/switchyard/test/netns"
	"github.com/switchyard-proxy/switchyard/test/wait"
)

// kubeProxyChains lists kube-proxy's chains on a node, in every backend and
// family.
func kubeProxyChains(t *testing.T, n *cluster.Node) []string {
	t.Helper()
	var found []string
	for _, save := range []string{"iptables-nft-save", "iptables-legacy-save", "ip6tables-nft-save", "ip6tables-legacy-save"} {
		out, err := n.Run(save)
		if err != nil {
			t.Fatalf("%s: %v", save, err)
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, ":") {
				if name := strings.Fields(line[1:])[0]; iptables.KubeProxyChains(name) {
					found = append(found, save+" "+name)
				}
			}
		}
	}
	return found
}

// Migrating a node from kube-proxy: switchyard's rules are installed while
// kube-proxy still runs, kube-proxy is stopped (its rules stay, as kube-proxy
// never removes them on exit), then `switchyard cleanup --kube-proxy`
// removes them. Traffic must flow throughout.
func TestMigrationFromKubeProxy(t *testing.T) {
	n := c.Nodes[1]
	ns := c.Namespace(t)
	pods := c.Deploy(t, ns, "mig", 2)
	svc := c.CreateService(t, ns, "mig", cluster.ServiceOptions{Mutate: nodePortService})
	client := c.StartPod(t, ns, cluster.PodOptions{Name: "client", Node: n})
	addr := cluster.Addr(svc, 80)
	nodePort := fmt.Sprintf("%s:%d", n.IP, cluster.NodePortOf(svc, "http"))
	cluster.ReachesAll(t, client.NS.NS, "tcp", addr, cluster.Names(pods))

	kp := n.StartKubeProxy(t)
	if !wait.Poll(60*time.Second, func() bool {
		out, _ := n.Save("nat")
		return strings.Contains(out, "-A KUBE-SERVICES") && strings.Contains(out, ns+"/mig:http cluster IP")
	}) {
		t.Fatalf("upstream kube-proxy never programmed %s (log: %s)", addr, kp.LogPath)
	}
	if len(kubeProxyChains(t, n)) == 0 {
		t.Fatal("no kube-proxy chains found while it runs")
	}

	podLoad := netns.StartLoad(20000, client.NS.LoadTCP(addr, cluster.RequestTimeout))
	extLoad := netns.StartLoad(20000, c.External.LoadTCP(nodePort, cluster.RequestTimeout))
	// Let both loops run through kube-proxy's rules for a while.
	if !wait.Poll(cluster.Converge, func() bool { return podLoad.Requests() > 20 && extLoad.Requests() > 20 }) {
		t.Fatal("the load loops did not get going")
	}
	if err := kp.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	out, err := n.Run(c.Opts.Switchyard, "cleanup", "--kube-proxy")
	if err != nil {
		t.Fatalf("cleanup --kube-proxy: %v\n%s", err, out)
	}
	t.Logf("cleanup --kube-proxy:\n%s", out)
	before := podLoad.Requests() + extLoad.Requests()
	if !wait.Poll(cluster.Converge, func() bool { return podLoad.Requests()+extLoad.Requests() > before+40 }) {
		t.Fatal("the load loops stalled after the cleanup")
	}
	for _, l := range []*netns.Load{podLoad, extLoad} {
		requests, failures, firstErr := l.Stop()
		if failures > 0 {
			t.Errorf("%d of %d requests failed during the migration: %v", failures, requests, firstErr)
		}
	}
	if left := kubeProxyChains(t, n); len(left) > 0 {
		t.Errorf("kube-proxy chains left after cleanup: %v", left)
	}
	saved, _ := n.Run("iptables-save")
	if !strings.Contains(saved, ":SWY-SERVICES") {
		t.Error("switchyard's own chains went too")
	}
	cluster.ReachesAll(t, client.NS.NS, "tcp", addr, cluster.Names(pods))
	cluster.ReachesAll(t, c.External, "tcp", nodePort, cluster.Names(pods))
}
