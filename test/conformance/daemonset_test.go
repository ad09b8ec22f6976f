package main

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/switchyard-proxy/switchyard/test/kubeadm"
)

// The kubeadm DaemonSet's ConfigMap carries kubeadm's config.conf intact
// (but for maxPerCore, which a node namespace cannot apply).
func TestKubeadmManifestCarriesKubeadmsConfig(t *testing.T) {
	m := kubeProxyDaemonSet("192.168.80.1", "6443", "switchyard:dev")
	for _, doc := range strings.Split(m, "\n---\n") {
		if !strings.Contains(doc, "kind: ConfigMap") {
			continue
		}
		var cm v1.ConfigMap
		if err := yaml.Unmarshal([]byte(doc), &cm); err != nil {
			t.Fatal(err)
		}
		want := strings.Replace(kubeadm.ProxyConfig("/var/lib/kube-proxy/kubeconfig.conf", clusterCIDR), "  maxPerCore: null", "  maxPerCore: 0", 1)
		if got := cm.Data["config.conf"]; got != strings.TrimSuffix(want, "\n") {
			t.Errorf("config.conf differs from kubeadm's:\n%s", got)
		}
		return
	}
	t.Fatal("no ConfigMap in the manifest")
}
