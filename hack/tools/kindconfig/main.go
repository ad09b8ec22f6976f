// Command kindconfig checks kind cluster configs with kind's own config
// types: the file must decode strictly (no unknown or misspelt fields) as a
// v1alpha4 Cluster, and switchyard's clusters must run without kube-proxy.
package main

import (
	"fmt"
	"os"

	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/yaml"
)

// noneProxyMode is kind's documented value for "no kube-proxy" (kind has no
// named constant for it).
const noneProxyMode v1alpha4.ProxyMode = "none"

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kindconfig FILE...")
		os.Exit(2)
	}
	failed := false
	for _, path := range os.Args[1:] {
		if err := check(path); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}

func check(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var c v1alpha4.Cluster
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return err
	}
	if c.Kind != "Cluster" || c.APIVersion != "kind.x-k8s.io/v1alpha4" {
		return fmt.Errorf("not a kind.x-k8s.io/v1alpha4 Cluster: %s %s", c.APIVersion, c.Kind)
	}
	if c.Networking.KubeProxyMode != noneProxyMode {
		return fmt.Errorf("networking.kubeProxyMode is %q, want %q: switchyard replaces kube-proxy", c.Networking.KubeProxyMode, noneProxyMode)
	}
	if len(c.Nodes) == 0 {
		return fmt.Errorf("no nodes")
	}
	return nil
}
