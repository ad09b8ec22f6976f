package integration

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
	"github.com/switchyard-proxy/switchyard/pkg/proxier"
	"github.com/switchyard-proxy/switchyard/test/netns"
)

// treeSnapshot is n Services with ClusterIPs spread over 10.96.0.0/16 and
// NodePorts from 30000: Service i goes to pod i%2, every seventh has no
// endpoints.
func treeSnapshot(n int, pods []string) *proxier.Snapshot {
	snap := proxier.NewSnapshot()
	snap.Node = proxier.NodeInfo{Name: "node-a", Known: true}
	for i := range n {
		name := proxier.ServicePortName{Namespace: "tree", Name: fmt.Sprintf("svc-%04d", i), Port: "http", Protocol: v1.ProtocolTCP}
		snap.Services[name] = &proxier.ServicePort{Name: name, Port: 80, NodePort: int32(30000 + i),
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i * 37 >> 8), byte(i * 37)})}}
		if i%7 == 0 {
			continue
		}
		snap.Endpoints[name] = []proxier.Endpoint{{Addr: netip.MustParseAddr(pods[i%2]), Port: 8080, Ready: true, Serving: true, NodeName: "node-a"}}
	}
	return snap
}

// TestRealPacketsThroughDispatchTree programs 400 Services with dispatch
// leaves of four rules, so every packet crosses a tree of chains, through a
// real syncer on each backend with restores bounded to 300 rules (so the
// first sync runs as a dozen chunked restores), and checks with real
// connections that every sampled ClusterIP and NodePort reaches its own
// endpoint, that a Service without endpoints refuses, and that a Service
// added later (a partial sync that rewrites one leaf) answers. Then a
// restarted syncer rewrites everything in chunks, and every Service moves
// to its other endpoint, in bounded steps, while a client keeps connecting
// through one Service: no request may fail.
func TestRealPacketsThroughDispatchTree(t *testing.T) {
	netns.RequireRoot(t, "iptables-legacy-restore", "iptables-nft-restore")
	for _, backend := range backends {
		t.Run(string(backend), func(t *testing.T) {
			node := netns.NewNode(t, "192.168.77.1")
			pods := []*netns.Pod{node.AddPod(t, "10.244.0.11"), node.AddPod(t, "10.244.0.12")}
			client := node.AddPod(t, "10.244.0.20")
			pods[0].ServeTCP(t, ":8080", "pod0")
			pods[1].ServeTCP(t, ":8080", "pod1")
			snap := treeSnapshot(400, []string{pods[0].IP, pods[1].IP})
			c := cfg()
			c.DispatchLeafSize = 4
			var syncer *proxier.Syncer
			sync := func(snap *proxier.Snapshot) proxier.SyncResult {
				t.Helper()
				var res proxier.SyncResult
				err := node.Do(func() error {
					if syncer == nil {
						r, err := iptables.NewRunner(context.Background(), iptables.IPv4, backend)
						if err != nil {
							return err
						}
						syncer = proxier.NewSyncer(c, r)
						syncer.MaxRestoreRules = 300
					}
					var err error
					res, err = syncer.Sync(context.Background(), snap)
					return err
				})
				if err != nil {
					t.Fatal(err)
				}
				return res
			}
			if res := sync(snap); res.Restores < 5 {
				t.Errorf("first sync of 400 Services in %d restores; want several bounded ones", res.Restores)
			}
			if n := len(syncer.Rules().Table("nat").Chains); n < 100 {
				t.Fatalf("only %d nat chains: the dispatch is not a tree", n)
			}
			for i := 1; i < 400; i += 23 {
				want := fmt.Sprintf("pod%d", i%2)
				vip := snap.Services[proxier.ServicePortName{Namespace: "tree", Name: fmt.Sprintf("svc-%04d", i), Port: "http", Protocol: v1.ProtocolTCP}].ClusterIPs[0]
				for _, addr := range []string{netip.AddrPortFrom(vip, 80).String(), fmt.Sprintf("%s:%d", node.IP, 30000+i)} {
					if i%7 == 0 {
						continue
					}
					a, err := client.GetTCP(addr, 3*time.Second)
					if err != nil || a.Server != want {
						t.Errorf("%s: answer %+v, err %v; want %s", addr, a, err, want)
					}
				}
			}
			if _, err := client.GetTCP("10.96.0.0:80", 3*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("Service without endpoints: err = %v, want connection refused", err)
			}

			name := proxier.ServicePortName{Namespace: "tree", Name: "late", Port: "http", Protocol: v1.ProtocolTCP}
			snap.Services[name] = &proxier.ServicePort{Name: name, Port: 80, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.200.200")}}
			snap.Endpoints[name] = []proxier.Endpoint{{Addr: netip.MustParseAddr(pods[1].IP), Port: 8080, Ready: true, Serving: true}}
			sync(snap)
			if a, err := client.GetTCP("10.96.200.200:80", 3*time.Second); err != nil || a.Server != "pod1" {
				t.Errorf("Service added by a partial sync: answer %+v, err %v", a, err)
			}
			// One beside the others goes into its place in the tree by "-I",
			// the chains it goes into are not written again, and the host
			// ends exactly as rendered.
			near := proxier.ServicePortName{Namespace: "tree", Name: "near", Port: "http", Protocol: v1.ProtocolTCP}
			snap.Services[near] = &proxier.ServicePort{Name: near, Port: 80, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.32.100")}}
			snap.Endpoints[near] = []proxier.Endpoint{{Addr: netip.MustParseAddr(pods[0].IP), Port: 8080, Ready: true, Serving: true}}
			sync(snap)
			if b, _ := syncer.Batches(); !strings.Contains(b.Text, "\n-I SWY-DSP-") {
				t.Errorf("a Service beside others should be inserted into the tree:\n%s", b.Text)
			}
			if a, err := client.GetTCP("10.96.32.100:80", 3*time.Second); err != nil || a.Server != "pod0" {
				t.Errorf("Service inserted into the tree: answer %+v, err %v", a, err)
			}
			hostIsRendered(t, node, backend, "insertion", proxier.Render(snap, c))

			// Restart (a new syncer: a chunked full sync over live rules),
			// then every Service swaps endpoints (bounded partial syncs),
			// under load.
			load := netns.StartLoad(1000000, func() error {
				_, err := client.GetTCP("10.96.200.200:80", 2*time.Second)
				return err
			})
			syncer = nil
			if res := sync(snap); !res.Full || res.Restores < 5 {
				t.Errorf("restart: full=%v in %d restores; want a full sync in several bounded restores", res.Full, res.Restores)
			}
			swapped := treeSnapshot(400, []string{pods[1].IP, pods[0].IP})
			swapped.Services[name], swapped.Endpoints[name] = snap.Services[name], snap.Endpoints[name]
			steps := 1
			for res := sync(swapped); res.Pending > 0; res = sync(swapped) {
				if steps++; steps > 100 {
					t.Fatalf("bounded syncs did not finish in 100 steps")
				}
			}
			if steps < 3 {
				t.Errorf("the swap of 400 Services took %d syncs; with a bound of 300 rules it needs several", steps)
			}
			requests, failures, firstErr := load.Stop()
			if failures > 0 || requests < 50 {
				t.Errorf("under restart and bounded syncs: %d of %d requests failed: %v", failures, requests, firstErr)
			}
			for i := 1; i < 400; i += 37 {
				if i%7 == 0 {
					continue
				}
				want := fmt.Sprintf("pod%d", (i+1)%2)
				if a, err := client.GetTCP(fmt.Sprintf("%s:%d", node.IP, 30000+i), 3*time.Second); err != nil || a.Server != want {
					t.Errorf("after the swap, NodePort %d: answer %+v, err %v; want %s", 30000+i, a, err, want)
				}
			}

			// Services that go are deleted from their dispatch leaves rule by
			// rule ("-D", no rule added): their neighbours keep answering and
			// the host ends exactly as rendered.
			for _, i := range []int{2, 3, 9} {
				n := proxier.ServicePortName{Namespace: "tree", Name: fmt.Sprintf("svc-%04d", i), Port: "http", Protocol: v1.ProtocolTCP}
				delete(swapped.Services, n)
				delete(swapped.Endpoints, n)
			}
			if res := sync(swapped); res.ChainsDeleted == 0 {
				t.Errorf("deleting three Services deleted no chain: %+v", res)
			}
			if b, _ := syncer.Batches(); !strings.Contains(b.Text, "\n-D SWY-DSP-") || strings.Contains(b.Text, "\n-A ") {
				t.Errorf("deleting Services should delete their dispatch rules and add none:\n%s", b.Text)
			}
			hostIsRendered(t, node, backend, "deletion", proxier.Render(swapped, c))
			for _, i := range []int{1, 4, 8, 10} {
				want := fmt.Sprintf("pod%d", (i+1)%2)
				if a, err := client.GetTCP(fmt.Sprintf("%s:%d", node.IP, 30000+i), 3*time.Second); err != nil || a.Server != want {
					t.Errorf("after deleting its neighbours, NodePort %d: answer %+v, err %v; want %s", 30000+i, a, err, want)
				}
			}
		})
	}
}

// hostIsRendered fails the test unless the node's IPv4 tables hold exactly
// the chains of rules.
func hostIsRendered(t *testing.T, node *netns.Node, backend iptables.Backend, what string, rules *proxier.Rules) {
	t.Helper()
	_ = node.Do(func() error {
		r, err := iptables.NewRunner(context.Background(), iptables.IPv4, backend)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := hostChains(t, r)
		sameChains(t, what, got, wantChains(rules))
		return nil
	})
}
