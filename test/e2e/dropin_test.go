package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/test/e2e/cluster"
	"github.com/switchyard-proxy/switchyard/test/kubeadm"
	"github.com/switchyard-proxy/switchyard/test/wait"
)

// The command lines real kube-proxy DaemonSets run, with this machine's
// paths: switchyard must start from each unchanged and program Services.
// (The negative --oom-score-adj cannot be set without CAP_SYS_RESOURCE,
// which these machines lack: logged, as kube-proxy does, not fatal.)
func TestKubeProxyDaemonSetCommandLines(t *testing.T) {
	n := c.Nodes[0]
	kubeadmDir := t.TempDir()
	configPath := filepath.Join(kubeadmDir, "config.conf")
	if err := os.WriteFile(configPath, []byte(kubeadm.ProxyConfig(c.CP.ProxyKubeconfig, cluster.ClusterCIDR)), 0o644); err != nil {
		t.Fatal(err)
	}
	lines := []struct {
		name string
		args []string
	}{
		// kubeadm's DaemonSet: command kube-proxy --config --hostname-override.
		{"kubeadm", []string{"--config=" + configPath, "--hostname-override=" + n.Name}},
		// A kops-style flag-only command line.
		{"kops", []string{"--cluster-cidr=" + cluster.ClusterCIDR, "--conntrack-max-per-core=131072",
			"--hostname-override=" + n.Name, "--kubeconfig=" + c.CP.ProxyKubeconfig, "--master=" + c.CP.Server,
			"--oom-score-adj=-998", "--v=2"}},
		// kube-up's (GCE) flag-only command line, IPVS periods and all.
		{"kube-up", []string{"--v=2", "--iptables-sync-period=1m", "--iptables-min-sync-period=10s",
			"--ipvs-sync-period=1m", "--ipvs-min-sync-period=10s", "--cluster-cidr=" + cluster.ClusterCIDR,
			"--oom-score-adj=-998", "--kubeconfig=" + c.CP.ProxyKubeconfig, "--hostname-override=" + n.Name,
			"--proxy-mode=iptables", "--feature-gates=AllowServiceExternalIPs=true", "--bind-address=" + n.IP,
			"--healthz-bind-address=0.0.0.0:10256", "--metrics-bind-address=127.0.0.1:10249", "--profiling=false"}},
	}
	ns := c.Namespace(t)
	pods := c.Deploy(t, ns, "dropin", 2)
	client := c.StartPod(t, ns, cluster.PodOptions{Name: "client", Node: n})
	if err := n.StopProxy(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = n.StopProxy()
		if err := n.StartProxy(nil); err != nil {
			t.Error(err)
		}
		if err := n.WaitProxySynced(cluster.Converge); err != nil {
			t.Error(err)
		}
	})
	// The node ran kube-proxy in nftables mode before: as kube-proxy in
	// iptables mode does, switchyard removes those tables at start.
	if out, err := n.Run("nft", "add", "table", "ip", "kube-proxy"); err != nil {
		t.Fatalf("nft: %v %s", err, out)
	}
	for i, l := range lines {
		t.Run(l.name, func(t *testing.T) {
			if err := n.StartProxyArgs(l.args...); err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := n.StopProxy(); err != nil {
					t.Error(err)
				}
			}()
			// A Service created now is programmed by this command line.
			svc := c.CreateService(t, ns, "dropin-"+l.name, cluster.ServiceOptions{Selector: map[string]string{"app": "dropin"}})
			cluster.ReachesAll(t, client.NS.NS, "tcp", cluster.Addr(svc, 80), cluster.Names(pods))
			if running, err := n.ProxyRunning(); !running {
				t.Fatalf("switchyard exited: %v", err)
			}
			if i == 0 {
				if tables, _ := n.Run("nft", "list", "tables"); strings.Contains(tables, "kube-proxy") {
					t.Errorf("an nftables-mode kube-proxy's table is still there:\n%s", tables)
				}
			}
			// Its health port answers as kube-proxy's, and /configz shows
			// the configuration it runs with.
			var body []byte
			ok := wait.Poll(cluster.Converge, func() bool {
				resp, b, err := n.HTTPGet("http://127.0.0.1:10256/healthz", 2*time.Second)
				body = b
				return err == nil && resp.StatusCode == 200
			})
			if !ok {
				t.Fatalf("/healthz never answered 200: %s", body)
			}
			_, cz, err := n.HTTPGet("http://127.0.0.1:10249/configz", 2*time.Second)
			var configz map[string]struct {
				HostnameOverride string `json:"hostnameOverride"`
				ClusterCIDR      string `json:"clusterCIDR"`
				Mode             string `json:"mode"`
			}
			if err != nil || json.Unmarshal(cz, &configz) != nil {
				t.Fatalf("/configz: %v %s", err, cz)
			}
			got := configz["kubeproxy.config.k8s.io"]
			if got.HostnameOverride != n.Name || got.ClusterCIDR != cluster.ClusterCIDR || got.Mode != "iptables" {
				t.Errorf("/configz: %s", cz)
			}
		})
	}
}
