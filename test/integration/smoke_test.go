package integration

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
	"github.com/switchyard-proxy/switchyard/pkg/manifest"
	"github.com/switchyard-proxy/switchyard/pkg/proxier"
	"github.com/switchyard-proxy/switchyard/test/netns"
)

const smokeObjects = `
apiVersion: v1
kind: Node
metadata: {name: node-a}
status:
  addresses: [{type: InternalIP, address: 192.168.77.1}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.0.11], nodeName: node-a}
- {addresses: [10.244.0.12], nodeName: node-a}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec:
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 80}]
`

// reachAll asks the ClusterIP from ns until every server has answered, at
// most tries times; it returns who answered and the client address each saw.
func reachAll(t *testing.T, ns *netns.NS, addr string, servers []string, tries int) map[string]string {
	t.Helper()
	seen := map[string]string{}
	for i := 0; i < tries && len(seen) < len(servers); i++ {
		a, err := ns.GetTCP(addr, 2*time.Second)
		if err != nil {
			t.Fatalf("request %d from %s to %s: %v", i, ns.Name, addr, err)
		}
		seen[a.Server] = a.Client
	}
	if len(seen) < len(servers) {
		t.Fatalf("after %d requests from %s only %v answered, want all of %v", tries, ns.Name, seen, servers)
	}
	return seen
}

// TestSmokeRealPackets applies the output of `switchyard render` to a node
// namespace with two pod namespaces behind it and sends real connections
// through the ClusterIP.
func TestSmokeRealPackets(t *testing.T) {
	netns.RequireRoot(t, "iptables-restore")
	dir := t.TempDir()
	objects := filepath.Join(dir, "objects.yaml")
	if err := os.WriteFile(objects, []byte(smokeObjects), 0o644); err != nil {
		t.Fatal(err)
	}
	rendered, err := exec.Command(binary, "render", "-f", objects, "--cluster-cidr", "10.244.0.0/16", "--hostname-override", "node-a").Output()
	if err != nil {
		t.Fatalf("switchyard render: %v", err)
	}

	node := netns.NewNode(t, "192.168.77.1")
	pod1 := node.AddPod(t, "10.244.0.11")
	pod2 := node.AddPod(t, "10.244.0.12")
	client := node.AddPod(t, "10.244.0.20")
	pod1.ServeTCP(t, ":8080", "pod1")
	pod2.ServeTCP(t, ":8080", "pod2")
	if out, err := node.RunInput(rendered, "iptables-restore", "--noflush"); err != nil {
		t.Fatalf("applying rendered rules: %v\n%s", err, out)
	}
	servers := []string{"pod1", "pod2"}

	t.Run("pod to ClusterIP reaches both endpoints, not masqueraded", func(t *testing.T) {
		seen := reachAll(t, client.NS, "10.96.0.10:80", servers, 100)
		for server, src := range seen {
			if src != client.IP {
				t.Errorf("%s saw client %s, want the pod's own %s", server, src, client.IP)
			}
		}
	})
	t.Run("node to ClusterIP reaches both endpoints", func(t *testing.T) {
		reachAll(t, node.NS, "10.96.0.10:80", servers, 100)
	})
	t.Run("hairpin: a pod reaches itself through its Service", func(t *testing.T) {
		seen := reachAll(t, pod1.NS, "10.96.0.10:80", servers, 100)
		if seen["pod1"] == pod1.IP {
			t.Errorf("pod1 reached itself without masquerade")
		}
	})
	t.Run("no endpoints: connection refused at once", func(t *testing.T) {
		start := time.Now()
		_, err := client.GetTCP("10.96.0.11:80", 5*time.Second)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("err = %v, want connection refused", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("refusal took %v: a timeout, not a REJECT", d)
		}
	})

	// A daemon restart: a new syncer adopts the rendered rules with a full
	// sync while a client keeps connecting; no request may fail.
	t.Run("restart adopts rules without a gap", func(t *testing.T) {
		objs, err := manifest.Load([]string{objects}, nil)
		if err != nil {
			t.Fatal(err)
		}
		snap, _ := proxier.SnapshotFromObjects(proxier.Filter{}, "node-a", objs.Services, objs.Slices, objs.Nodes)
		load := netns.StartLoad(5000, func() error {
			_, err := client.GetTCP("10.96.0.10:80", 2*time.Second)
			return err
		})
		err = node.Do(func() error {
			ctx := context.Background()
			r, err := iptables.NewRunner(ctx, iptables.IPv4, iptables.BackendAuto)
			if err != nil {
				return err
			}
			// Restart until at least 50 requests overlapped the restarts
			// (bounded: at most 200 restarts).
			for i := 0; i < 200 && load.Requests() < 50; i++ {
				s := proxier.NewSyncer(cfg(), r) // a fresh process each time
				if res, err := s.Sync(ctx, snap); err != nil || !res.Full {
					return errors.Join(err, errors.New("expected a successful full sync"))
				}
			}
			return nil
		})
		requests, failures, firstErr := load.Stop()
		if err != nil {
			t.Fatal(err)
		}
		if requests < 50 {
			t.Fatalf("only %d requests overlapped the restarts", requests)
		}
		if failures > 0 {
			t.Errorf("%d of %d requests failed during restarts: %v", failures, requests, firstErr)
		}
		reachAll(t, client.NS, "10.96.0.10:80", servers, 100)
	})
}
