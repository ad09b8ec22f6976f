package main

import (
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"k8s.io/klog/v2"

	"github.com/switchyard-proxy/switchyard/pkg/proxier"
)

// kubeProxyFlags is every flag kube-proxy v1.36.3 registers on Linux (its
// --help), with a value of the flag's type.
var kubeProxyFlags = map[string]string{
	"bind-address": "10.0.0.1", "bind-address-hard-fail": "true", "boot-id-file": "/proc/sys/kernel/random/boot_id",
	"cleanup": "false", "cluster-cidr": "10.244.0.0/16", "config": "", "config-sync-period": "15m",
	"conntrack-max-per-core": "0", "conntrack-min": "131072", "conntrack-tcp-be-liberal": "false",
	"conntrack-tcp-timeout-close-wait": "1h", "conntrack-tcp-timeout-established": "24h",
	"conntrack-udp-timeout": "0s", "conntrack-udp-timeout-stream": "0s", "detect-local-mode": "ClusterCIDR",
	"feature-gates": "AllowServiceExternalIPs=true", "healthz-bind-address": "0.0.0.0:10256", "help": "false",
	"hostname-override": "node-a", "init-only": "false", "iptables-localhost-nodeports": "true",
	"iptables-masquerade-bit": "14", "iptables-min-sync-period": "1s", "iptables-sync-period": "30s",
	"ipvs-exclude-cidrs": "10.0.0.0/8", "ipvs-min-sync-period": "1s", "ipvs-scheduler": "rr", "ipvs-strict-arp": "true",
	"ipvs-sync-period": "30s", "ipvs-tcp-timeout": "0s", "ipvs-tcpfin-timeout": "0s", "ipvs-udp-timeout": "0s",
	"kube-api-burst": "10", "kube-api-content-type": "application/vnd.kubernetes.protobuf", "kube-api-qps": "5",
	"kubeconfig": "/dev/null", "log-flush-frequency": "5s", "log-json-info-buffer-size": "0",
	"log-json-split-stream": "false", "log-text-info-buffer-size": "0", "log-text-split-stream": "false",
	"logging-format": "text", "machine-id-file": "/etc/machine-id", "masquerade-all": "false",
	"master": "https://127.0.0.1:6443", "metrics-bind-address": "127.0.0.1:10249", "nodeport-addresses": "primary",
	"oom-score-adj": "-999", "pod-bridge-interface": "cbr0", "pod-interface-name-prefix": "veth",
	"profiling": "false", "proxy-mode": "iptables", "show-hidden-metrics-for-version": "1.35", "v": "2",
	"version": "false", "vmodule": "sync=4", "write-config-to": "",
	// Hidden or deprecated, still accepted by kube-proxy.
	"healthz-port": "10256", "metrics-port": "10249",
}

func TestEveryKubeProxyFlagIsAccepted(t *testing.T) {
	for name, value := range kubeProxyFlags {
		if name == "help" {
			continue // cobra's, and it works: pflag reports "help requested"
		}
		cmd := newRootCommand()
		if err := cmd.ParseFlags([]string{"--" + name + "=" + value}); err != nil {
			t.Errorf("--%s=%s: %v", name, value, err)
		}
	}
	// The list is kube-proxy's own: compare with its --help when the tools
	// module has built it.
	bin := "../../test/e2e/tools/bin/kube-proxy"
	if _, err := os.Stat(bin); err != nil {
		t.Logf("kube-proxy is not built (%v); checked the recorded list only", err)
		return
	}
	out, _ := exec.Command(bin, "--help").CombinedOutput()
	var theirs []string
	for _, m := range regexp.MustCompile(`(?m)^\s+(?:-\w, )?--([a-z0-9-]+)`).FindAllStringSubmatch(string(out), -1) {
		theirs = append(theirs, m[1])
	}
	sort.Strings(theirs)
	if len(theirs) < 40 {
		t.Fatalf("could not read kube-proxy's flags from its --help:\n%s", out)
	}
	for _, f := range theirs {
		if _, ok := kubeProxyFlags[f]; !ok {
			t.Errorf("kube-proxy has --%s, which this test (and maybe switchyard) does not know", f)
		}
	}
}

func TestWindowsAndIPVSFlagsWarnOnce(t *testing.T) {
	o := newDaemonOptions()
	cmd := newRootCommandWith(o)
	if err := cmd.ParseFlags([]string{"--ipvs-scheduler=rr", "--ipvs-strict-arp", "--windows-service", "--proxy-port-range=30000-32767"}); err != nil {
		t.Fatal(err)
	}
	warnings, err := o.kp.Complete(cmd.Flags())
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(warnings, "\n")
	if strings.Count(joined, "do not apply to switchyard") != 1 {
		t.Fatalf("want one warning line naming the flags, got %q", joined)
	}
	for _, f := range []string{"--ipvs-scheduler", "--ipvs-strict-arp", "--windows-service", "--proxy-port-range"} {
		if !strings.Contains(joined, f) {
			t.Errorf("warning %q does not name %s", joined, f)
		}
	}
}

func TestKubeProxyFlagValuesAsKubeProxyChecksThem(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // error text; empty: accepted
	}{
		{[]string{"--proxy-mode=iptables"}, ""},
		{[]string{"--proxy-mode="}, ""},
		{[]string{"--proxy-mode=nftables"}, ""},
		{[]string{"--proxy-mode=ipvs"}, ""},
		{[]string{"--proxy-mode=kernelspace"}, "--proxy-mode: kernelspace"},
		{[]string{"--proxy-mode=userspace"}, "--proxy-mode: \"userspace\" is not a valid proxy mode"},
		{[]string{"--feature-gates=NoSuchGate=true"}, "--feature-gates: unrecognized feature gate: NoSuchGate"},
		{[]string{"--feature-gates=PreferSameTrafficDistribution=false"}, "locked to true"},
		{[]string{"--oom-score-adj=-1001"}, "--oom-score-adj"},
		{[]string{"--show-hidden-metrics-for-version=1.35"}, ""},
		{[]string{"--show-hidden-metrics-for-version=1.30"}, "--show-hidden-metrics-for-version"},
		{[]string{"--bind-address=not-an-ip"}, "--bind-address"},
		{[]string{"--logging-format=xml"}, "--logging-format"},
		{[]string{"--config-sync-period=0s"}, "--config-sync-period"},
	} {
		o := newDaemonOptions()
		cmd := newRootCommandWith(o)
		if err := cmd.ParseFlags(tc.args); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		_, err := o.kp.Complete(cmd.Flags())
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%v: error %v, want %q", tc.args, err, tc.want)
		case tc.want != "" && strings.Contains(err.Error(), "\n"):
			t.Errorf("%v: error is not one line: %v", tc.args, err)
		}
	}
	// Refusals exit 2, as usage errors do.
	if _, code, err := execute(t, "--feature-gates=NoSuchGate=true", "--kubeconfig=/dev/null"); code != 2 {
		t.Errorf("an unknown gate exits %d (%v), want 2", code, err)
	}
}

func TestDeprecatedPortFlags(t *testing.T) {
	for _, tc := range []struct {
		addr, want string
		port       int32
	}{
		{"0.0.0.0:10256", "0.0.0.0:10256", 12345}, // a port in the address wins
		{"0.0.0.0", "0.0.0.0:12345", 12345},
		{"::", "[::]:12345", 12345},
		{"0.0.0.0:10256", "", 0}, // 0 disables
	} {
		if got := withPort(tc.addr, tc.port); got != tc.want {
			t.Errorf("withPort(%q, %d) = %q, want %q", tc.addr, tc.port, got, tc.want)
		}
	}
}

// --write-config-to writes the effective configuration; started from that
// file, switchyard runs with the same one.
func TestWriteConfigToRoundTrips(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kube-proxy.yaml")
	args := []string{"--write-config-to=" + path, "--hostname-override=node-a", "--cluster-cidr=10.244.0.0/16",
		"--iptables-masquerade-bit=12", "--oom-score-adj=-500", "--feature-gates=AllowServiceExternalIPs=false",
		"--nodeport-addresses=10.0.0.0/8", "--bind-address=10.0.0.7", "--iptables-min-sync-period=2s"}
	if _, code, err := execute(t, args...); err != nil || code != 0 {
		t.Fatalf("--write-config-to: %v (exit %d)", err, code)
	}
	o := newDaemonOptions()
	cmd := newRootCommandWith(o)
	if err := cmd.ParseFlags([]string{"--config=" + path}); err != nil {
		t.Fatal(err)
	}
	c, warnings, err := loadConfigFile(path, cmd.Flags())
	if err != nil {
		t.Fatalf("the written file does not load: %v", err)
	}
	if len(warnings) > 0 {
		t.Errorf("the written file warns: %q", warnings)
	}
	if c.HostnameOverride != "node-a" || c.ClusterCIDR != "10.244.0.0/16" || *c.IPTables.MasqueradeBit != 12 ||
		*c.OOMScoreAdj != -500 || c.FeatureGates["AllowServiceExternalIPs"] || c.BindAddress != "10.0.0.7" ||
		c.IPTables.MinSyncPeriod.Duration.String() != "2s" || c.Mode != "iptables" {
		js, _ := json.Marshal(c)
		t.Errorf("written configuration lost values: %s", js)
	}
	if o.masqBit != 12 || o.kp.oomScoreAdj != -500 || o.nodePortAddrs[0] != "10.0.0.0/8" {
		t.Errorf("loading it back did not set the flags: bit %d oom %d nodeports %v", o.masqBit, o.kp.oomScoreAdj, o.nodePortAddrs)
	}
}

func TestVersionFlag(t *testing.T) {
	out, code, err := execute(t, "--version")
	if err != nil || code != 0 || !strings.HasPrefix(out, "switchyard ") {
		t.Errorf("--version: %q %v %d", out, err, code)
	}
	out, _, _ = execute(t, "--version=raw")
	if !strings.Contains(out, "go1.") {
		t.Errorf("--version=raw: %q", out)
	}
}

// --nodeport-addresses=primary: the health check node ports listen on the
// node's primary IPs only (the Node's first address per family, or
// --bind-address), and on none until the Node is known.
func TestHealthCheckAddrsWithPrimary(t *testing.T) {
	o := newDaemonOptions()
	cmd := newRootCommandWith(o)
	if err := cmd.ParseFlags([]string{"--nodeport-addresses=primary", "--hostname-override=n1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := o.kp.Complete(cmd.Flags()); err != nil {
		t.Fatal(err)
	}
	if err := o.Complete(); err != nil {
		t.Fatal(err)
	}
	node := proxier.NodeInfo{Name: "n1", Known: true, Addresses: []netip.Addr{
		netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("2001:db8::10")}}
	got := o.healthCheckAddrs(klog.Background(), node)
	if strings.Join(got, ",") != "192.0.2.10,2001:db8::10" {
		t.Errorf("primary: %v", got)
	}
	if got := o.healthCheckAddrs(klog.Background(), proxier.NodeInfo{Name: "n1"}); got == nil || len(got) != 0 {
		t.Errorf("before the Node is known: %#v, want an empty list (no server), not nil (every address)", got)
	}
	o.kp.primaryOverride = netip.MustParseAddr("192.0.2.99")
	if got := o.healthCheckAddrs(klog.Background(), node); strings.Join(got, ",") != "192.0.2.99,2001:db8::10" {
		t.Errorf("with --bind-address: %v", got)
	}
}
