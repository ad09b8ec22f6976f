// Command localcluster is `make run`: it starts the e2e suite's local
// cluster (a real control plane, two network-namespace nodes each running
// switchyard, a Deployment-like set of pods and a Service), streams node-1's
// switchyard log to the terminal, prints how to reach the Service and how to
// explain a packet, and tears everything down on Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/switchyard-proxy/switchyard/test/e2e/cluster"
	"github.com/switchyard-proxy/switchyard/test/netns"
)

func main() {
	repo := flag.String("repo", ".", "the repository root")
	bin := flag.String("switchyard", "bin/switchyard", "the switchyard binary")
	tools := flag.String("tools", "test/e2e/tools/bin", "where kube-apiserver and kube-controller-manager are")
	logs := flag.String("logs", "_output/local", "where component logs go")
	flag.Parse()
	if msg := netns.Missing("iptables", "etcd"); msg != "" {
		fmt.Fprintln(os.Stderr, "localcluster:", msg)
		os.Exit(1)
	}
	abs := func(p string) string {
		a, err := filepath.Abs(p)
		if err != nil {
			fmt.Fprintln(os.Stderr, "localcluster:", err)
			os.Exit(1)
		}
		return a
	}
	owner := &cluster.Owner{}
	// Ctrl-C at any time tears down what exists so far.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	ready := make(chan struct{})
	go func() {
		select {
		case <-sig:
			fmt.Println("\nInterrupted while starting; tearing down...")
			owner.Close()
			os.Exit(130)
		case <-ready:
		}
	}()
	var c *cluster.Cluster
	var svc *v1.Service
	var pods []*cluster.Pod
	err := owner.Catch(func() {
		fmt.Println("Starting etcd, kube-apiserver, kube-controller-manager and two nodes...")
		c = cluster.Start(owner, cluster.Options{
			Prefix: "swy-run", Subnet: "192.168.78", Subnet6: "fd00:78::", RootIf: "swy-run0", Nodes: 2,
			RepoRoot: abs(*repo), ToolsDir: abs(*tools), Switchyard: abs(*bin), LogDir: abs(*logs),
			ProxyTee: prefixWriter{prefix: "[switchyard node-1] "},
		})
		ctx := context.Background()
		if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}, metav1.CreateOptions{}); err != nil {
			owner.Fatalf("creating namespace demo: %v", err)
		}
		pods = c.Deploy(owner, "demo", "web", 3)
		svc = c.CreateService(owner, "demo", "web", cluster.ServiceOptions{})
		for _, n := range c.Nodes {
			if err := n.WaitProgrammed("demo/web:http cluster IP", time.Minute); err != nil {
				owner.Fatalf("%v", err)
			}
		}
	})
	if err != nil {
		owner.Close()
		fmt.Fprintf(os.Stderr, "localcluster: %v (logs in %s)\n", err, abs(*logs))
		os.Exit(1)
	}

	var podLines []string
	for _, p := range pods {
		podLines = append(podLines, fmt.Sprintf("%s (%s on %s, netns %s)", p.Name, p.IP, p.Node.Name, p.NS.Name))
	}
	node1 := c.Nodes[0]
	fmt.Printf(`
================================================================================
The local cluster is up.
  API server:  %s   kubeconfig: %s
  Nodes:       node-1 (netns %s, %s), node-2 (netns %s, %s)
  Service:     demo/web  ClusterIP %s  ports 80/TCP -> http, 53/UDP -> dns
  Pods:        %s

Reach the Service from node-1 (each answer is "POD CLIENT-IP"; repeat it to
see the load balancing):
  ip netns exec %s curl -s --http0.9 http://%s/
and from a pod:
  ip netns exec %s curl -s --http0.9 http://%s/

Explain what happens to a packet, from the live rules of node-1:
  ip netns exec %s %s explain --from %s --to %s:80
and see the rules themselves:
  ip netns exec %s iptables-save -t nat | grep demo/web

Component logs: %s
Press Ctrl-C to tear everything down.
================================================================================
`, c.CP.Server, c.CP.AdminKubeconfig,
		node1.NS.Name, node1.IP, c.Nodes[1].NS.Name, c.Nodes[1].IP,
		svc.Spec.ClusterIP, strings.Join(podLines, ", "),
		node1.NS.Name, svc.Spec.ClusterIP,
		pods[0].NS.Name, svc.Spec.ClusterIP,
		node1.NS.Name, abs(*bin), pods[0].IP, svc.Spec.ClusterIP,
		node1.NS.Name, abs(*logs))

	close(ready)
	<-sig
	fmt.Println("\nTearing down...")
	owner.Close()
	fmt.Println("Done; the machine is as it was.")
}

// prefixWriter prefixes each line of node-1's switchyard log.
type prefixWriter struct{ prefix string }

func (w prefixWriter) Write(p []byte) (int, error) {
	for _, line := range strings.SplitAfter(string(p), "\n") {
		if line != "" {
			fmt.Print(w.prefix + line)
		}
	}
	return len(p), nil
}
