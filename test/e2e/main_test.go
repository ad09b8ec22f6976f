// Package e2e proves switchyard's behaviour on a real cluster built from
// real parts: etcd, kube-apiserver and kube-controller-manager (v1.36.3),
// nodes and pods made of network namespaces, one switchyard per node, real
// packets. One control plane serves the whole suite; each test works in its
// own Kubernetes namespace.
//
// Run it as root with an explicit timeout: go test -count=1 -timeout 30m ./test/e2e/
// It refuses (fails with the reason) when it cannot run. Logs go to
// $ARTIFACTS (default artifacts/e2e), kept when the suite fails or when
// E2E_KEEP_ARTIFACTS is set.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/switchyard-proxy/switchyard/test/e2e/cluster"
	"github.com/switchyard-proxy/switchyard/test/netns"
)

// c is the suite's cluster.
var c *cluster.Cluster

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "e2e: cannot run: "+format+"\n", args...)
		return 1
	}
	if msg := netns.Missing("iptables", "iptables-save", "iptables-restore", "etcd"); msg != "" {
		return fail("%s", msg)
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		return fail("%v", err)
	}
	tools := filepath.Join(root, "test/e2e/tools")
	start := time.Now()
	build := exec.Command(filepath.Join(tools, "build.sh"))
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fail("building the control-plane binaries: %v", err)
	}
	artifacts := os.Getenv("ARTIFACTS")
	if artifacts == "" {
		artifacts = filepath.Join(root, "artifacts", "e2e")
	}
	_ = os.RemoveAll(artifacts)
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		return fail("%v", err)
	}
	bin := filepath.Join(artifacts, "switchyard")
	if out, err := exec.Command("go", "build", "-o", bin, filepath.Join(root, "cmd/switchyard")).CombinedOutput(); err != nil {
		return fail("building switchyard: %v\n%s", err, out)
	}

	owner := &cluster.Owner{}
	defer owner.Close()
	if err := owner.Catch(func() {
		c = cluster.Start(owner, cluster.Options{
			Prefix: "swy-e2e", Subnet: "192.168.77", Subnet6: "fd00:77::", RootIf: "swy-e2e0", Nodes: 2,
			RepoRoot: root, ToolsDir: filepath.Join(tools, "bin"), Switchyard: bin, LogDir: artifacts,
		})
	}); err != nil {
		return fail("starting the cluster: %v (logs in %s)", err, artifacts)
	}
	fmt.Fprintf(os.Stderr, "e2e: cluster of %d nodes up in %v; logs in %s\n", len(c.Nodes), time.Since(start).Round(time.Second), artifacts)

	code := m.Run()
	for _, n := range c.Nodes {
		if running, err := n.ProxyRunning(); !running {
			fmt.Fprintf(os.Stderr, "e2e: switchyard on %s is not running at the end (%v)\n", n.Name, err)
			code = 1
		}
	}
	if err := c.CP.Check(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		code = 1
	}
	if code != 0 {
		c.Dump(artifacts)
		fmt.Fprintf(os.Stderr, "e2e: FAILED; component logs and node rules are in %s\n", artifacts)
		return code
	}
	owner.Close()
	if os.Getenv("E2E_KEEP_ARTIFACTS") == "" {
		_ = os.RemoveAll(artifacts)
	}
	return 0
}

func deleteService(namespace, name string) error {
	return c.Client.CoreV1().Services(namespace).Delete(context.Background(), name, metav1.DeleteOptions{})
}

func deleteNow() metav1.DeleteOptions {
	zero := int64(0)
	return metav1.DeleteOptions{GracePeriodSeconds: &zero}
}

func itoa(n int32) string { return fmt.Sprint(n) }
