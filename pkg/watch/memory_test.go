package watch

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
	"github.com/switchyard-proxy/switchyard/pkg/proxier"
)

// discard is a host that accepts everything and keeps nothing.
type discard struct{}

func (discard) Restore(context.Context, []byte) error     { return nil }
func (discard) TestRestore(context.Context, []byte) error { return nil }
func (discard) Save(context.Context, string) ([]byte, error) {
	return nil, nil
}
func (discard) EnsureJumps(context.Context, []iptables.Jump) error { return nil }
func (discard) Present(context.Context, map[string][]string, []iptables.Jump) (bool, error) {
	return true, nil
}

func benchObjects(i, m int) (*v1.Service, *discovery.EndpointSlice) {
	name := fmt.Sprintf("svc-%05d", i)
	svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: name},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}).String(),
			Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}}}
	svc.Spec.ClusterIPs = []string{svc.Spec.ClusterIP}
	sl := &discovery.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: name,
		Labels: map[string]string{discovery.LabelServiceName: name}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}}}
	for e := range m {
		sl.Endpoints = append(sl.Endpoints, discovery.Endpoint{Addresses: []string{fmt.Sprintf("10.244.%d.%d", e, i%250)},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)}})
	}
	return svc, sl
}

func heap() float64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.HeapAlloc) / (1 << 20)
}

// BenchmarkMemory10k reports what 10,000 Services x 10 endpoints keep
// alive in switchyard's own state, as MB of live heap: the informer caches
// and the tracker ("cached-MB": the objects go through the informers'
// transform into a client-go store and the handlers, as in the daemon),
// then what a sync adds ("rules-MB"); and the process's peak RSS, a
// high-water mark: run it with -benchtime 1x for that one to mean anything.
// The objects are small (no managed fields, no pod references), so the
// API objects' share is a lower bound of what a real cluster's would be.
func BenchmarkMemory10k(b *testing.B) {
	for b.Loop() {
		before := heap()
		tr := NewTracker(klog.Background(), proxier.Filter{}, "node-a", nil)
		transform := newTransform(proxier.Filter{})
		services, slices := cache.NewStore(cache.DeletionHandlingMetaNamespaceKeyFunc), cache.NewStore(cache.DeletionHandlingMetaNamespaceKeyFunc)
		svcH, sliceH := serviceHandler(tr), sliceHandler(tr)
		for i := range 10000 {
			svc, sl := benchObjects(i, 10)
			for _, o := range []struct {
				obj   any
				store cache.Store
				h     cache.ResourceEventHandlerFuncs
			}{{svc, services, svcH}, {sl, slices, sliceH}} {
				obj, err := transform(o.obj)
				if err != nil {
					b.Fatal(err)
				}
				if err := o.store.Add(obj); err != nil {
					b.Fatal(err)
				}
				o.h.OnAdd(obj, true)
			}
		}
		tracked := heap()
		b.ReportMetric(peakRSS(), "tracker-peak-RSS-MB")
		s := proxier.NewSyncer(proxier.RenderConfig{Family: v1.IPv4Protocol, MasqueradeBit: 14, ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16")}, discard{})
		s.MaxRestoreRules = proxier.DefaultMaxRestoreRulesNFT
		if _, err := s.Sync(context.Background(), tr.TakeSnapshot()); err != nil {
			b.Fatal(err)
		}
		synced := heap()
		if path := os.Getenv("HEAPPROFILE"); path != "" {
			f, err := os.Create(path)
			if err == nil {
				_ = pprof.WriteHeapProfile(f)
				f.Close()
			}
		}
		b.ReportMetric(tracked-before, "cached-MB")
		b.ReportMetric(synced-tracked, "rules-MB")
		b.ReportMetric(peakRSS(), "peak-RSS-MB")
		runtime.KeepAlive(tr)
		runtime.KeepAlive(s)
		runtime.KeepAlive(services)
		runtime.KeepAlive(slices)
	}
}

// peakRSS is this process's peak resident memory in MB (VmHWM).
func peakRSS() float64 {
	data, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb float64
			_, _ = fmt.Sscan(strings.TrimSpace(rest), &kb) // 0 if unreadable
			return kb / 1024
		}
	}
	return 0
}

// BenchmarkDaemonSyncOneChange10k is one endpoint change at 10,000
// Services x 10 endpoints along the daemon's whole path after the informer:
// the tracker takes the new slice, the proxier snapshots it and syncs both
// IP families (the IPv6 one has nothing to program). The host keeps
// nothing, so this is the Go side of a change only.
func BenchmarkDaemonSyncOneChange10k(b *testing.B) {
	tr, p := daemonAt(b, 10000)
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		_, sl := benchObjects(i%10000, 10)
		sl.Endpoints = sl.Endpoints[:9+i%2] // alternately 9 and 10 endpoints
		tr.UpdateSlice(sl)
		if err := p.SyncOnce(ctx); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkDaemonNewService30k is a new Service and its slice at 30,000
// Services x 10 endpoints spread over 50 nodes (the bench's shape), along
// the same path: the change that rewrites a dispatch tree and adds a name
// to the sorted ones.
func BenchmarkDaemonNewService30k(b *testing.B) {
	tr, p := daemonAt(b, 30000, spread)
	ctx := context.Background()
	b.ReportAllocs()
	i := 30000
	for b.Loop() {
		svc, sl := spread(benchObjects(i, 10))
		tr.UpdateService(svc)
		tr.UpdateSlice(sl)
		if err := p.SyncOnce(ctx); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// daemonAt is a tracker with n Services x 10 endpoints and a proxier of
// both IP families on it (the IPv6 one has nothing to program), synced
// once. The host keeps nothing, so a sync is the Go side only.
func daemonAt(b *testing.B, n int, shape ...func(*v1.Service, *discovery.EndpointSlice) (*v1.Service, *discovery.EndpointSlice)) (*Tracker, *proxier.Proxier) {
	tr := NewTracker(klog.Background(), proxier.Filter{}, "node-a", nil)
	for i := range n {
		svc, sl := benchObjects(i, 10)
		for _, f := range shape {
			svc, sl = f(svc, sl)
		}
		tr.UpdateService(svc)
		tr.UpdateSlice(sl)
	}
	cfg := proxier.RenderConfig{MasqueradeBit: 14}
	v4, v6 := cfg, cfg
	v4.Family, v4.ClusterCIDR = v1.IPv4Protocol, netip.MustParsePrefix("10.244.0.0/16")
	v6.Family = v1.IPv6Protocol
	p := proxier.New(proxier.LoopConfig{}, tr, proxier.NewSyncer(v4, discard{}), proxier.NewSyncer(v6, discard{}))
	if err := p.SyncOnce(context.Background()); err != nil {
		b.Fatal(err)
	}
	return tr, p
}

// spread puts a Service's endpoints on 50 nodes, as the bench does: the
// node under test ("node-a") holds one in fifty.
func spread(svc *v1.Service, sl *discovery.EndpointSlice) (*v1.Service, *discovery.EndpointSlice) {
	var i int
	_, _ = fmt.Sscanf(svc.Name, "svc-%05d", &i)
	for e := range sl.Endpoints {
		node := "node-a"
		if k := (i*len(sl.Endpoints) + e) % 50; k != 0 {
			node = fmt.Sprintf("node-%d", k)
		}
		sl.Endpoints[e].NodeName = ptr.To(node)
	}
	return svc, sl
}
