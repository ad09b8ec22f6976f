package proxier

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"k8s.io/klog/v2"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
	"github.com/switchyard-proxy/switchyard/test/wait"
)

// fakeCPU is a clock and a CPU counter the test moves by hand.
type fakeCPU struct {
	t    time.Time
	used time.Duration
}

func (f *fakeCPU) budget(share float64, maxDelay time.Duration) *cpuBudget {
	b := newCPUBudget(share, maxDelay)
	b.now = func() time.Time { return f.t }
	b.used = func() time.Duration { return f.used }
	b.refilled = f.t
	return b
}

func TestCPUBudgetDelaysOnlyInDeficit(t *testing.T) {
	f := &fakeCPU{t: time.Unix(1000, 0)}
	b := f.budget(0.25, time.Minute) // a bucket of 15 CPU-seconds
	if d := b.Delay(); d != 0 {
		t.Fatalf("a fresh budget delays by %v", d)
	}
	done := b.Start()
	f.used += 14 * time.Second
	f.t = f.t.Add(4 * time.Second)
	done() // 15 + 0 (full) - 14 = 1 left
	if d := b.Delay(); d != 0 {
		t.Fatalf("delayed by %v with 1 CPU-second left", d)
	}
	done = b.Start()
	f.used += 2 * time.Second
	done() // 1 - 2 = -1: owed
	if d := b.Delay(); d != 4*time.Second {
		t.Fatalf("delay %v with 1 CPU-second owed at a quarter core, want 4s", d)
	}
	f.t = f.t.Add(4 * time.Second)
	if d := b.Delay(); d != 0 {
		t.Fatalf("still delayed by %v once the deficit is earned back", d)
	}
	// A quiet spell refills the bucket, but no further than its size.
	f.t = f.t.Add(time.Hour)
	if got := b.Balance(); got != 15 {
		t.Fatalf("balance %v after an hour, want the bucket's 15", got)
	}
}

func TestCPUBudgetChargesOverlappingSyncsOnce(t *testing.T) {
	f := &fakeCPU{t: time.Unix(1000, 0)}
	b := f.budget(0.25, time.Minute)
	a := b.Start()
	f.used += time.Second
	c := b.Start()
	f.used += time.Second
	a()
	f.used += time.Second
	c()
	if got := b.Balance(); got != 12 { // 15 - 3: the process used 3 CPU-seconds in all
		t.Fatalf("balance %v, want 12 (overlapping syncs charged once)", got)
	}
}

func TestCPUBudgetBoundsEachDelay(t *testing.T) {
	f := &fakeCPU{t: time.Unix(1000, 0)}
	b := f.budget(0.25, 10*time.Second)
	done := b.Start()
	f.used += 2 * time.Minute // a full sync far bigger than the bucket
	done()
	if d := b.Delay(); d != 10*time.Second {
		t.Fatalf("delay %v, want the bound of 10s", d)
	}
	f.t = f.t.Add(10 * time.Second)
	if d := b.Delay(); d != 0 {
		t.Fatalf("the deficit beyond the bound still delays by %v", d)
	}
}

// Under sustained churn (a sync whenever the budget allows, each costing
// 0.3 CPU-seconds), the loop's CPU over ten minutes is the share plus at
// most the bucket; with no budget it would be whatever the churn asks.
func TestCPUBudgetHoldsTheShareUnderSustainedChurn(t *testing.T) {
	f := &fakeCPU{t: time.Unix(1000, 0)}
	b := f.budget(0.25, 15*time.Second)
	start := f.t
	syncs := 0
	for f.t.Sub(start) < 10*time.Minute {
		f.t = f.t.Add(b.Delay() + 100*time.Millisecond) // the minimum period, then the sync's own time
		done := b.Start()
		f.used += 300 * time.Millisecond
		done()
		syncs++
	}
	elapsed := f.t.Sub(start).Seconds()
	if limit := 0.25*elapsed + 15 + 0.3; f.used.Seconds() > limit {
		t.Errorf("%d syncs used %.1f CPU-seconds in %.0f s, more than the share allows (%.1f)", syncs, f.used.Seconds(), elapsed, limit)
	}
	if f.used.Seconds() < 0.25*elapsed-1 {
		t.Errorf("%d syncs used only %.1f CPU-seconds in %.0f s: the budget held back more than it must", syncs, f.used.Seconds(), elapsed)
	}
}

func TestNoCPUBudgetNeverDelays(t *testing.T) {
	b := newCPUBudget(0, time.Minute)
	if b != nil {
		t.Fatal("a zero share made a budget")
	}
	b.Start()()
	if d := b.Delay(); d != 0 {
		t.Fatalf("delay %v without a budget", d)
	}
}

// The loop waits for the budget: with every sync costing more than the
// bucket holds, a stream of changes is applied by a few syncs, each one
// taking in everything that arrived while it waited, and the last change
// still lands.
func TestLoopWaitsForTheCPUBudget(t *testing.T) {
	var waitLines atomic.Int64
	logger := funcr.New(func(_, args string) {
		if strings.Contains(args, "Sync waited for the CPU budget") {
			waitLines.Add(1)
		}
	}, funcr.Options{Verbosity: 2})
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logger))
	defer cancel()
	fake := iptables.NewFake()
	src := &fixedSource{snap: NewSnapshot()}
	p := New(LoopConfig{SyncPeriod: time.Hour}, src, NewSyncer(defaultConfig(), fake))
	var used atomic.Int64
	p.budget = &cpuBudget{share: 1, burst: 0.1, balance: 0.1, maxDelay: time.Hour, now: time.Now,
		// each sync is charged 0.4 CPU-seconds: the difference between the
		// reading when it starts and the one when it is done
		used: func() time.Duration { return time.Duration(used.Add(int64(400 * time.Millisecond))) }}
	p.budget.refilled = time.Now()
	go p.Run(ctx)
	<-p.Synced()
	if got := p.budget.Balance(); got != 0.1 {
		t.Fatalf("balance %v after the first sync, want the full 0.1: a cold start is not charged", got)
	}
	before, _ := p.status()
	start := time.Now()
	var last *Snapshot
	for i := range 40 { // one change every 10 ms for 400 ms
		snap := NewSnapshot()
		addService(snap, fmt.Sprintf("svc-%d", i), fmt.Sprintf("10.96.0.%d", i+1), 1)
		src.set(snap)
		p.RequestSync()
		last = snap
		time.Sleep(10 * time.Millisecond) // the pace of the changes, not a wait for a condition
	}
	want := wantChains(Render(last, defaultConfig()))
	wait.For(t, "the last state", 10*time.Second, func() bool { return equalChains(swyChains(fake), want) })
	after, _ := p.status()
	// 400 ms of changes at 0.4 s of "CPU" per sync and a share of one core:
	// no more than about one sync per 400 ms, plus the one the bucket allows.
	if n := after - before; n > int(time.Since(start)/(400*time.Millisecond))+2 {
		t.Errorf("%d syncs in %v: the budget did not space them out", n, time.Since(start))
	}
	// One line per sync that waited, however many changes cut its wait
	// short (at V(2) a load once logged sixty a second).
	if n := waitLines.Load(); n == 0 || n > int64(after-before) {
		t.Errorf("%d lines saying a sync waited for the budget, for %d syncs", n, after-before)
	}
}

// slowHost is a host whose restores take a set time, as a restore into a
// big nf_tables table does.
type slowHost struct {
	*iptables.Fake
	took time.Duration
}

func (h *slowHost) Restore(ctx context.Context, text []byte) error {
	time.Sleep(h.took) // the restore's cost, not a wait for a condition
	return h.Fake.Restore(ctx, text)
}

// awaitingSource says whether a Service waits for its first slice, as the
// tracker does.
type awaitingSource struct {
	*fixedSource
	awaiting atomic.Bool
}

func (a *awaitingSource) AwaitsEndpoints() bool { return a.awaiting.Load() }

// A Service and then its EndpointSlice a few milliseconds later, on a node
// where a sync takes 200 ms: one sync applies both, instead of a sync for
// the Service alone and a second for its endpoints.
func TestAChangeWaitsBrieflyForItsPair(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	host := &slowHost{Fake: iptables.NewFake(), took: 200 * time.Millisecond}
	src := &awaitingSource{fixedSource: &fixedSource{snap: NewSnapshot()}}
	p := New(LoopConfig{SyncPeriod: time.Hour}, src, NewSyncer(defaultConfig(), host))
	go p.Run(ctx)
	<-p.Synced()
	before, _ := p.status()
	alone := NewSnapshot()
	addService(alone, "web", "10.96.0.10", 0)
	src.set(alone)
	src.awaiting.Store(true)
	p.RequestSync()
	time.Sleep(5 * time.Millisecond) // the gap between the two API objects, not a wait for a condition
	both := NewSnapshot()
	addService(both, "web", "10.96.0.10", 2)
	src.set(both)
	src.awaiting.Store(false)
	p.RequestSync()
	want := wantChains(Render(both, defaultConfig()))
	wait.For(t, "the Service with its endpoints", 10*time.Second, func() bool { return equalChains(swyChains(host.Fake), want) })
	if after, _ := p.status(); after-before != 1 {
		t.Errorf("%d syncs for a Service and its EndpointSlice 5 ms apart, want 1", after-before)
	}
}
