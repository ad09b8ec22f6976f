package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/switchyard-proxy/switchyard/test/e2e/cluster"
	"github.com/switchyard-proxy/switchyard/test/netns"
	"github.com/switchyard-proxy/switchyard/test/wait"
)

// kubeNode is one node of the conformance cluster: a network namespace on
// the underlay with its own containerd, its own kubelet (pods networked by
// the CNI ptp and host-local plugins) and a service proxy.
type kubeNode struct {
	Name    string
	Index   int
	PodCIDR string
	*netns.Node
	// Dir holds everything of this node on disk: containerd's root and
	// state, the kubelet's root, pod logs, CNI configuration and IPAM.
	Dir string

	containerd, kubelet, proxy *cluster.Process
	logDir                     string
}

func (n *kubeNode) sock() string    { return filepath.Join(n.Dir, "containerd.sock") }
func (n *kubeNode) cgroup() string  { return "/swy-" + n.Name }
func (n *kubeNode) utsPath() string { return filepath.Join(n.Dir, "uts") }

// makeUTS gives the node a UTS namespace of its own whose host name is the
// node's name, as a real node's is: a hostNetwork pod shares it (the
// specs ask such a pod for its host name and expect the node's).
func (n *kubeNode) makeUTS() error {
	if err := os.WriteFile(n.utsPath(), nil, 0o644); err != nil {
		return err
	}
	if out, err := exec.Command("unshare", "--uts="+n.utsPath(), "hostname", n.Name).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: unshare --uts: %v: %s", n.Name, err, out)
	}
	return nil
}

// command runs a program in the node's network and UTS namespaces, and
// only those: nsenter, unlike `ip netns exec`, leaves /sys as it is, and
// the kubelet needs the host's cgroup mounts under /sys/fs/cgroup.
func (n *kubeNode) command(args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=/var/run/netns/" + n.NS.Name, "--uts=" + n.utsPath(), "--"}, args...)...)
}

func (n *kubeNode) start(name string, args ...string) (*cluster.Process, error) {
	return cluster.StartProcess(name+"@"+n.Name, n.command(args...), filepath.Join(n.logDir, name+"-"+n.Name+".log"), nil)
}

// containerdConfig is containerd 1.6's configuration for this node: its
// own root, state, socket and runc root; the CRI plugin with our pause image
// as the sandbox, the node's CNI configuration, and restrict_oom_score_adj
// (these machines lack CAP_SYS_RESOURCE: a negative oom_score_adj is
// refused, and every sandbox would fail in runc without it).
func (n *kubeNode) containerdConfig() string {
	d := n.Dir
	return fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  restrict_oom_score_adj = true
  enable_cdi = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = %[7]q
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %[8]q
`, filepath.Join(d, "containerd"), filepath.Join(d, "run"), n.sock(), filepath.Join(d, "ttrpc.sock"),
		filepath.Join(d, "opt"), pauseImage, filepath.Join(d, "runc"), filepath.Join(d, "cni"))
}

// cniConfig gives every pod a veth to the node (ptp: routed, so the node's
// iptables sees pod-to-pod traffic on one node too, as it does with kind's
// CNI) and an address from the node's pod CIDR.
func (n *kubeNode) cniConfig() string {
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "swy-conformance",
  "plugins": [
    {
      "type": "ptp",
      "mtu": 1500,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "dataDir": %q,
        "ranges": [[{"subnet": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, filepath.Join(n.Dir, "ipam"), n.PodCIDR)
}

// kubeletConfig is the KubeletConfiguration of this node.
func (n *kubeNode) kubeletConfig(clusterDNS string) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %q
containerRuntimeEndpoint: unix://%s
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
clusterDNS: [%s]
clusterDomain: cluster.local
resolvConf: %q
failSwapOn: false
podLogsDir: %q
podCIDR: %s
protectKernelDefaults: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%%"
  imagefs.available: "1%%"
  nodefs.inodesFree: "1%%"
serializeImagePulls: false
registerNode: true
syncFrequency: 10s
nodeStatusUpdateFrequency: 10s
fileCheckFrequency: 10s
`, n.cgroup(), n.sock(), n.IP, clusterDNS, filepath.Join(n.Dir, "resolv.conf"), filepath.Join(n.Dir, "pods"), n.PodCIDR)
}

// startRuntime writes the node's configuration, starts containerd, waits
// for its socket and imports every image archive.
func (n *kubeNode) startRuntime(images []image) error {
	for _, d := range []string{"cni", "pods", "kubelet", "ipam"} {
		if err := os.MkdirAll(filepath.Join(n.Dir, d), 0o755); err != nil {
			return err
		}
	}
	files := map[string]string{
		"containerd.toml":                 n.containerdConfig(),
		"cni/10-swy-conformance.conflist": n.cniConfig(),
		// Pods of dnsPolicy Default and the node's own lookups: no
		// nameserver outside the cluster exists here.
		"resolv.conf": "nameserver 127.0.0.1\noptions ndots:1\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(n.Dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	p, err := n.start("containerd", "containerd", "--config", filepath.Join(n.Dir, "containerd.toml"), "--log-level", "warn")
	if err != nil {
		return err
	}
	n.containerd = p
	if !wait.Poll(30*time.Second, func() bool {
		if done, _ := p.Exited(); done {
			return true
		}
		c, err := net.Dial("unix", n.sock())
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		return fmt.Errorf("%s: containerd's socket did not appear within 30s (log: %s)", n.Name, p.LogPath)
	}
	if done, err := p.Exited(); done {
		return fmt.Errorf("%s: containerd exited (%v); see %s", n.Name, err, p.LogPath)
	}
	for _, img := range images {
		out, err := exec.Command("ctr", "--address", n.sock(), "--namespace", "k8s.io", "images", "import", "--no-unpack=false", img.File).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: importing %s: %v: %s", n.Name, img.Name, err, out)
		}
	}
	return nil
}

// makeCgroups creates the node's cgroupRoot in every cgroup v1 hierarchy
// (the kubelet requires it to exist), with cpuset's CPUs and memory nodes
// copied from the parent, as v1 leaves a new cpuset empty.
func (n *kubeNode) makeCgroups() error {
	hierarchies, err := filepath.Glob("/sys/fs/cgroup/*")
	if err != nil {
		return err
	}
	for _, h := range hierarchies {
		if fi, err := os.Lstat(h); err != nil || !fi.IsDir() {
			continue // the cpu,cpuacct links
		}
		d := filepath.Join(h, strings.TrimPrefix(n.cgroup(), "/"))
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("%s: %w", n.Name, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if v, err := os.ReadFile(filepath.Join(h, f)); err == nil {
				if err := os.WriteFile(filepath.Join(d, f), v, 0o644); err != nil {
					return fmt.Errorf("%s: %s: %w", n.Name, f, err)
				}
			}
		}
	}
	return nil
}

// startKubelet starts the node's kubelet, which registers the Node.
func (n *kubeNode) startKubelet(cp *cluster.ControlPlane, toolsDir, clusterDNS string) error {
	if err := n.makeCgroups(); err != nil {
		return err
	}
	kubeconfig := filepath.Join(n.Dir, "kubelet.kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(cluster.Kubeconfig(cp.Server, cluster.NodeToken(n.Name))), 0o600); err != nil {
		return err
	}
	config := filepath.Join(n.Dir, "kubelet.yaml")
	if err := os.WriteFile(config, []byte(n.kubeletConfig(clusterDNS)), 0o644); err != nil {
		return err
	}
	p, err := n.start("kubelet", filepath.Join(toolsDir, "kubelet"),
		"--config="+config,
		"--kubeconfig="+kubeconfig,
		"--root-dir="+filepath.Join(n.Dir, "kubelet"),
		"--cert-dir="+filepath.Join(n.Dir, "kubelet", "pki"),
		"--hostname-override="+n.Name,
		"--node-ip="+n.IP,
		"--node-labels=topology.kubernetes.io/zone=zone-"+string(rune('a'+n.Index-1)),
		"-v=1")
	if err != nil {
		return err
	}
	n.kubelet = p
	return nil
}

// waitNodesReady waits until every node is registered and Ready.
func waitNodesReady(client kubernetes.Interface, nodes []*kubeNode, timeout time.Duration) error {
	var last string
	ok := wait.Poll(timeout, func() bool {
		for _, n := range nodes {
			if done, err := n.kubelet.Exited(); done {
				last = fmt.Sprintf("%s: kubelet exited (%v); see %s", n.Name, err, n.kubelet.LogPath)
				return true
			}
			node, err := client.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{})
			if err != nil {
				last = fmt.Sprintf("%s: %v", n.Name, err)
				return false
			}
			ready := false
			for _, c := range node.Status.Conditions {
				if c.Type == v1.NodeReady {
					ready = c.Status == v1.ConditionTrue
					last = fmt.Sprintf("%s: Ready=%s %s: %s", n.Name, c.Status, c.Reason, c.Message)
				}
			}
			if !ready {
				return false
			}
		}
		last = ""
		return true
	})
	if !ok || last != "" {
		return fmt.Errorf("nodes not ready within %v: %s", timeout, last)
	}
	return nil
}

// createNode registers the Node with its pod CIDR before the kubelet
// starts (the kubelet adopts it): node i owns 10.244.i.0/24, the range its
// CNI configuration hands out.
func createNode(client kubernetes.Interface, n *kubeNode) error {
	node := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{"kubernetes.io/hostname": n.Name}},
		Spec:       v1.NodeSpec{PodCIDR: n.PodCIDR, PodCIDRs: []string{n.PodCIDR}},
	}
	_, err := client.CoreV1().Nodes().Create(context.Background(), node, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// proxyCommand is how the node runs its service proxy: switchyard with the
// flags of deploy/daemonset.yaml, or upstream kube-proxy v1.36.3 in
// iptables mode with the flags its DaemonSets carry. Both are host-network
// processes of the node, authenticated as the proxy's ServiceAccount.
func (n *kubeNode) proxyCommand(proxy, switchyard, toolsDir, kubeconfig string) []string {
	if proxy == "kube-proxy" {
		return []string{filepath.Join(toolsDir, "kube-proxy"),
			"--kubeconfig=" + kubeconfig,
			"--hostname-override=" + n.Name,
			"--cluster-cidr=" + clusterCIDR,
			"--proxy-mode=iptables",
			"--conntrack-max-per-core=0", // the conntrack sysctls are not writable in a namespace
			"--v=2"}
	}
	return []string{switchyard,
		"--kubeconfig=" + kubeconfig,
		"--hostname-override=" + n.Name,
		"--cluster-cidr=" + clusterCIDR,
		"-v=2"}
}

func (n *kubeNode) startProxy(proxy, switchyard, toolsDir, kubeconfig string) error {
	p, err := n.start(proxy, n.proxyCommand(proxy, switchyard, toolsDir, kubeconfig)...)
	if err != nil {
		return err
	}
	n.proxy = p
	return nil
}

// waitProxyProgrammed waits until the node's nat table sends the
// kubernetes Service somewhere: the proxy is up and has synced.
func (n *kubeNode) waitProxyProgrammed(clusterIP string, timeout time.Duration) error {
	var last string
	programmed := false
	wait.Poll(timeout, func() bool {
		if n.proxy != nil {
			if done, err := n.proxy.Exited(); done {
				last = fmt.Sprintf("the proxy exited (%v); see %s", err, n.proxy.LogPath)
				return true
			}
		}
		out, err := n.Run("iptables-save", "-t", "nat")
		last = "no rule for " + clusterIP
		programmed = err == nil && strings.Contains(out, "-d "+clusterIP+"/32")
		return programmed
	})
	if programmed {
		return nil
	}
	return fmt.Errorf("%s: %s within %v", n.Name, last, timeout)
}
