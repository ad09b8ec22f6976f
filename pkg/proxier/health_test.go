package proxier

import (
	"context"
	"errors"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
	"github.com/switchyard-proxy/switchyard/test/wait"
)

func TestHealthCheckPorts(t *testing.T) {
	snap := loadSnapshot(t, "external.yaml", "node-a")
	ports, local := HealthCheckPorts(snap)
	if len(ports) != 1 || ports["ext/lb"] != 32000 {
		t.Fatalf("ports = %v, want only ext/lb:32000", ports)
	}
	if local["ext/lb"] != 1 {
		t.Errorf("local endpoints = %d, want 1 (10.244.1.20 on node-a)", local["ext/lb"])
	}
	// A terminating local endpoint does not count; a second port of the
	// same pod is the same endpoint.
	n := ServicePortName{Namespace: "ext", Name: "lb", Port: "http", Protocol: "TCP"}
	eps := snap.Endpoints[n]
	for i := range eps {
		if eps[i].NodeName == "node-a" {
			eps[i].Ready, eps[i].Terminating = false, true
		}
	}
	if _, local := HealthCheckPorts(snap); local["ext/lb"] != 0 {
		t.Errorf("terminating endpoint counted: %d", local["ext/lb"])
	}
	other := n
	other.Port = "https"
	snap.Services[other] = &ServicePort{Name: other, HealthCheckNodePort: 32000, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.50.6")}}
	snap.Endpoints[other] = []Endpoint{{Addr: netip.MustParseAddr("10.244.1.21"), Port: 8443, Ready: true, NodeName: "node-a"}}
	snap.Endpoints[n] = append(snap.Endpoints[n], Endpoint{Addr: netip.MustParseAddr("10.244.1.21"), Port: 8080, Ready: true, NodeName: "node-a"})
	if _, local := HealthCheckPorts(snap); local["ext/lb"] != 1 {
		t.Errorf("one pod on two ports counted %d times", local["ext/lb"])
	}
}

func TestProxierHealth(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fake := iptables.NewFake()
	src := &fixedSource{snap: NewSnapshot()}
	var synced atomic.Int32
	p := New(LoopConfig{MinSyncPeriod: 0, SyncPeriod: 100 * time.Millisecond, OnSynced: func(*Snapshot) { synced.Add(1) }},
		src, NewSyncer(defaultConfig(), fake))
	go p.Run(ctx)
	<-p.Synced()
	if !p.Healthy() {
		t.Error("unhealthy after a successful sync")
	}
	// Restores start failing: a requested sync never completes, and after
	// twice the sync period the proxy says so.
	fake.SetFailRestore(errors.New("iptables-restore: boom"))
	snap := NewSnapshot()
	addService(snap, "web", "10.96.0.10", 1)
	src.set(snap)
	p.RequestSync()
	wait.For(t, "unhealthy", 5*time.Second, func() bool { return !p.Healthy() })
	fh := p.FamilyHealth()
	if len(fh) != 1 || fh[0].Family != defaultConfig().Family || fh[0].Healthy || fh[0].LastSynced.IsZero() {
		t.Errorf("family health while the sync is overdue: %+v", fh)
	}
	failedSince := fh[0].LastSynced
	fake.SetFailRestore(nil)
	wait.For(t, "healthy again after the retry succeeds", 5*time.Second, p.Healthy)
	if fh := p.FamilyHealth(); !fh[0].Healthy || !fh[0].LastSynced.After(failedSince) {
		t.Errorf("family health after the retry: %+v", fh)
	}
	if synced.Load() == 0 {
		t.Error("OnSynced never called")
	}
}
