package main

import (
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/test/kubeadm"
)

// kubeadmConfig is kubeadm's config.conf with a few values of its own, to
// see them honoured.
var kubeadmConfig = strings.NewReplacer("burst: 0", "burst: 20", "qps: 0", "qps: 7",
	"  masqueradeBit: null\n  minSyncPeriod: 0s\n  syncPeriod: 0s\nipvs", "  masqueradeBit: 12\n  minSyncPeriod: 1s\n  syncPeriod: 0s\nipvs",
).Replace(kubeadm.ProxyConfig("/var/lib/kube-proxy/kubeconfig.conf", "10.244.0.0/16"))

func loadWith(t *testing.T, content string, args ...string) (*daemonOptions, string, error) {
	t.Helper()
	o := newDaemonOptions()
	cmd := newRootCommandWith(o)
	fs := cmd.Flags()
	if err := cmd.ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	_, warnings, err := loadConfigFile(writeFile(t, content), fs)
	return o, strings.Join(warnings, "\n"), err
}

func TestConfigFileFromKubeadmIsAccepted(t *testing.T) {
	o, warning, err := loadWith(t, kubeadmConfig)
	if err != nil {
		t.Fatal(err)
	}
	if o.clusterCIDR != "10.244.0.0/16" || o.masqBit != 12 || o.minSyncPeriod.String() != "1s" ||
		o.kubeconfig != "/var/lib/kube-proxy/kubeconfig.conf" || o.apiQPS != 7 || o.apiBurst != 20 {
		t.Errorf("fields not honoured: %+v", o)
	}
	if o.kp.oomScoreAdj != -999 || o.kp.bindAddress != "0.0.0.0" || o.healthzAddr != "0.0.0.0:10256" || o.metricsAddr != "127.0.0.1:10249" {
		t.Errorf("kubeadm's null/empty fields do not give kube-proxy's defaults: oom %d bind %q healthz %q metrics %q",
			o.kp.oomScoreAdj, o.kp.bindAddress, o.healthzAddr, o.metricsAddr)
	}
	if warning != "" {
		t.Errorf("kubeadm's zero-valued ipvs/nftables/winkernel sections warned: %s", warning)
	}
}

// As kube-proxy v1.36: with --config, the flags whose setting is in the
// file are ignored (even where the file leaves the field out), except
// --hostname-override and the logging flags, which win over the file.
func TestConfigFileWinsOverMappedFlags(t *testing.T) {
	o, warning, err := loadWith(t, kubeadmConfig, "--iptables-masquerade-bit=3", "--cluster-cidr=10.0.0.0/8",
		"--iptables-sync-period=5s", "--oom-score-adj=-5", "--feature-gates=AllowServiceExternalIPs=false",
		"--hostname-override=from-flag", "-v=4", "--service-proxy-name=mine", "--master=https://api:6443")
	if err != nil {
		t.Fatal(err)
	}
	if o.masqBit != 12 || o.clusterCIDR != "10.244.0.0/16" {
		t.Errorf("the file did not win: bit %d cidr %s", o.masqBit, o.clusterCIDR)
	}
	if o.syncPeriod.String() != "30s" || o.kp.oomScoreAdj != -999 || len(o.kp.featureGates) != 0 {
		t.Errorf("a flag the file leaves out was not ignored: sync %v oom %d gates %v", o.syncPeriod, o.kp.oomScoreAdj, o.kp.featureGates)
	}
	if o.hostname != "from-flag" || o.proxyName != "mine" || o.master != "https://api:6443" {
		t.Errorf("flags that count with --config were lost: hostname %q proxy name %q master %q", o.hostname, o.proxyName, o.master)
	}
	for _, f := range []string{"--iptables-masquerade-bit", "--cluster-cidr", "--iptables-sync-period", "--oom-score-adj", "--feature-gates"} {
		if !strings.Contains(warning, f) {
			t.Errorf("warning %q does not name the ignored %s", warning, f)
		}
	}
	for _, f := range []string{"--hostname-override", "--service-proxy-name", "--master", "-v"} {
		if strings.Contains(warning, f+",") || strings.HasSuffix(warning, f) {
			t.Errorf("warning %q names %s, which counts", warning, f)
		}
	}
}

func TestConfigFileHonoursKubeProxyOnlyFields(t *testing.T) {
	content := strings.Replace(kubeadmConfig, "oomScoreAdj: null", "oomScoreAdj: -500", 1)
	content = strings.Replace(content, "bindAddress: 0.0.0.0", "bindAddress: 192.0.2.7", 1)
	content = strings.Replace(content, "bindAddressHardFail: false", "bindAddressHardFail: true", 1)
	content = strings.Replace(content, "configSyncPeriod: 0s", "configSyncPeriod: 5m", 1)
	content = strings.Replace(content, `mode: ""`, `mode: iptables`, 1)
	content += "featureGates:\n  AllowServiceExternalIPs: false\n"
	o, warning, err := loadWith(t, content)
	if err != nil {
		t.Fatal(err)
	}
	if o.kp.oomScoreAdj != -500 || o.kp.bindAddress != "192.0.2.7" || !o.kp.bindHardFail || o.kp.configSync.String() != "5m0s" ||
		o.kp.proxyMode != "iptables" || o.kp.featureGates["AllowServiceExternalIPs"] {
		t.Errorf("fields not honoured: %+v", o.kp)
	}
	if warning != "" {
		t.Errorf("unexpected warning: %s", warning)
	}
}

func TestConfigFileIgnoredFieldsWarnOnce(t *testing.T) {
	content := strings.Replace(kubeadmConfig, `  scheduler: ""`, `  scheduler: rr`, 1)
	content = strings.Replace(content, `enableProfiling: false`, `enableProfiling: true`, 1)
	content = strings.Replace(content, `portRange: ""`, `portRange: 30000-31000`, 1)
	o, warning, err := loadWith(t, content)
	if err != nil {
		t.Fatal(err)
	}
	if !o.profiling || strings.Contains(warning, "enableProfiling") {
		t.Errorf("enableProfiling is --profiling, not ignored: profiling=%v, warning %q", o.profiling, warning)
	}
	for _, w := range []string{"ipvs", "portRange"} {
		if !strings.Contains(warning, w) {
			t.Errorf("warning %q does not name %s", warning, w)
		}
	}
}

// kube-proxy decodes strictly first and, on a strict-decoding error
// (unknown or duplicated keys), leniently with a warning: a file written
// for an older kube-proxy, with fields since removed, still starts.
func TestConfigFileLenientDecodingOfRemovedFields(t *testing.T) {
	content := kubeadmConfig + "resourceContainer: /kube-proxy\nudpIdleTimeout: 250ms\n"
	o, warning, err := loadWith(t, content)
	if err != nil {
		t.Fatalf("a file with since-removed fields must start: %v", err)
	}
	if o.masqBit != 12 {
		t.Errorf("the known fields were not applied: bit %d", o.masqBit)
	}
	for _, f := range []string{"lenient decoding", "resourceContainer", "udpIdleTimeout"} {
		if !strings.Contains(warning, f) {
			t.Errorf("warning %q does not name %s", warning, f)
		}
	}
	dup := strings.Replace(kubeadmConfig, "clusterCIDR: 10.244.0.0/16", "clusterCIDR: 10.1.0.0/16\nclusterCIDR: 10.244.0.0/16", 1)
	o, warning, err = loadWith(t, dup)
	if err != nil || o.clusterCIDR != "10.244.0.0/16" || !strings.Contains(warning, "clusterCIDR") {
		t.Errorf("duplicate key: err %v, cidr %s, warning %q", err, o.clusterCIDR, warning)
	}
}

func TestConfigFileErrorsNameTheField(t *testing.T) {
	cases := map[string][]string{
		"bad bit":          {strings.Replace(kubeadmConfig, "masqueradeBit: 12", "masqueradeBit: 40", 1), "iptables.masqueradeBit"},
		"bad duration":     {strings.Replace(kubeadmConfig, "minSyncPeriod: 1s\n  syncPeriod", "minSyncPeriod: soon\n  syncPeriod", 1), "soon"},
		"wrong type":       {strings.Replace(kubeadmConfig, "qps: 7", "qps: many", 1), "qps"},
		"wrong kind":       {strings.Replace(kubeadmConfig, "kind: KubeProxyConfiguration", "kind: KubeletConfiguration", 1), "KubeletConfiguration"},
		"bad yaml":         {kubeadmConfig + "  : : :\n\t-", "--config"},
		"negative tuning":  {strings.Replace(kubeadmConfig, "  maxPerCore: null", "  maxPerCore: -1", 1), "conntrack.maxPerCore"},
		"oom out of range": {strings.Replace(kubeadmConfig, "oomScoreAdj: null", "oomScoreAdj: 5000", 1), "oomScoreAdj"},
	}
	for name, c := range cases {
		_, _, err := loadWith(t, c[0])
		if err == nil || !strings.Contains(err.Error(), c[1]) {
			t.Errorf("%s: error %v does not name %q", name, err, c[1])
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error is not one line", name)
		}
	}
}
