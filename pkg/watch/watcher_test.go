package watch

import (
	"context"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
	"github.com/switchyard-proxy/switchyard/pkg/proxier"
	"github.com/switchyard-proxy/switchyard/test/wait"
)

// The informer wiring end to end, against client-go's in-memory clientset
// (the real API server is exercised by the e2e suite): objects created,
// changed and deleted reach the host's rules through the sync loop.
func TestWatcherDrivesSyncs(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset()
	host := iptables.NewFake()
	tracker := NewTracker(klog.Background(), proxier.Filter{}, "node-a", nil)
	syncer := proxier.NewSyncer(proxier.RenderConfig{Family: v1.IPv4Protocol, MasqueradeBit: 14}, host)
	p := proxier.New(proxier.LoopConfig{MinSyncPeriod: 10 * time.Millisecond, SyncPeriod: time.Minute}, tracker, syncer)
	w := NewWatcher(client, tracker, 0)
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	go p.Run(ctx)

	hasChain := func(name string) bool { return len(host.Snapshot().ChainNames(proxier.TableNAT, name)) == 1 }
	svcChain := proxier.ServiceChainName(web)

	if _, err := client.CoreV1().Services("default").Create(ctx, svc("web"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "a REJECT for the Service without endpoints", 10*time.Second, func() bool {
		return strings.Contains(strings.Join(host.Snapshot().RuleTexts(proxier.TableFilter, proxier.ChainServices), "\n"), "default/web:http has no endpoints")
	})
	if _, err := client.DiscoveryV1().EndpointSlices("default").Create(ctx, slice("web-1", "web", "10.0.0.1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the Service chain", 10*time.Second, func() bool { return hasChain(svcChain) })

	// An update replaces the slice's endpoints (the informer keeps slices
	// parsed, and hands the tracker the new form).
	if _, err := client.DiscoveryV1().EndpointSlices("default").Update(ctx, slice("web-1", "web", "10.0.0.2", "10.0.0.3"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the updated endpoints", 10*time.Second, func() bool {
		eps := tracker.TakeSnapshot().Endpoints[web]
		return len(eps) == 2 && eps[0].Addr.String() == "10.0.0.2" && eps[1].Addr.String() == "10.0.0.3"
	})

	if err := client.DiscoveryV1().EndpointSlices("default").Delete(ctx, "web-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the Service chain to go with its endpoints", 10*time.Second, func() bool { return !hasChain(svcChain) })

	if err := client.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the REJECT to go with the Service", 10*time.Second, func() bool {
		return len(host.Snapshot().RuleTexts(proxier.TableFilter, proxier.ChainServices)) == 0
	})

	// The Node arriving later is picked up.
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}, Status: v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.168.0.1"}}}}
	if _, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the Node", 10*time.Second, func() bool { return tracker.TakeSnapshot().Node.Known })
}
