package integration

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
	"github.com/switchyard-proxy/switchyard/pkg/proxier"
	"github.com/switchyard-proxy/switchyard/test/netns"
	"github.com/switchyard-proxy/switchyard/test/wait"
)

type source struct {
	mu   sync.Mutex
	snap *proxier.Snapshot
}

func (s *source) TakeSnapshot() *proxier.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap
}

func (s *source) set(snap *proxier.Snapshot) {
	s.mu.Lock()
	s.snap = snap
	s.mu.Unlock()
}

// With the legacy backend, another program holding /run/xtables.lock longer
// than iptables-restore waits (-w 5) makes restores fail; the sync loop
// retries with backoff, is unhealthy meanwhile, and converges once the lock
// is free, without ever leaving a Service half-programmed.
func TestXtablesLockHeldByAnotherProgram(t *testing.T) {
	netns.RequireRoot(t, "iptables-legacy-restore", "flock")
	tp := newTopology(t)
	ns := tp.node.NS
	var load *netns.Load
	err := ns.Do(func() error {
		r, src, p, stop, err := startLegacy(ns, 2*time.Second)
		if err != nil {
			return err
		}
		defer stop()
		load = tp.load()

		// Hold the lock for 8 s, longer than the restore's 5 s wait.
		holder := exec.Command("flock", "/run/xtables.lock", "sleep", "8")
		if err := holder.Start(); err != nil {
			return err
		}
		defer func() { _ = holder.Wait() }() // the holder exits 0 after its sleep; only its end matters
		if !wait.Poll(5*time.Second, func() bool {
			return exec.Command("flock", "-n", "/run/xtables.lock", "true").Run() != nil
		}) {
			t.Fatal("the lock holder never took the lock")
		}
		want := withLive(snapshot(map[string]int{"web": 3, "db": 1}))
		src.set(want)
		p.RequestSync()

		if !wait.Poll(20*time.Second, func() bool { return syncFailing(p) }) {
			return fmt.Errorf("no restore failed while the lock was held")
		}
		// The requested sync is overdue (more than twice the sync period):
		// /healthz says so.
		if !wait.Poll(10*time.Second, func() bool { return !p.Healthy() }) {
			return fmt.Errorf("still healthy while no sync could complete")
		}
		lastErr := lastRefusal(p)
		if !strings.Contains(lastErr, "xtables lock") && !strings.Contains(lastErr, "exit status") {
			t.Logf("failure while locked: %v", lastErr)
		}
		// Converges after the lock is released.
		if !wait.Poll(40*time.Second, func() bool {
			got, _ := hostChains(t, r)
			return len(got["nat"]) == len(wantChains(proxier.Render(want, cfg()))["nat"])
		}) {
			t.Fatal("did not converge after the lock was released")
		}
		got, _ := hostChains(t, r)
		sameChains(t, "after the lock", got, wantChains(proxier.Render(want, cfg())))
		if syncFailing(p) {
			t.Errorf("still failing: %v", lastRefusal(p))
		}
		if !wait.Poll(10*time.Second, p.Healthy) {
			t.Error("not healthy again after converging")
		}
		return nil
	})
	if load != nil {
		noFailures(t, "xtables lock held", load, 20)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// On legacy the integrity check's listings wait for the xtables lock too.
// While one waits behind another program's lock, a change must still go
// straight to its restore (and fail there after its own 5-s wait, to be
// retried), not queue behind the check; and the check, when it gives up,
// has seen nothing broken: it asks for no full sync.
func TestCheckWaitingForTheLockBlocksNothing(t *testing.T) {
	netns.RequireRoot(t, "iptables-legacy-restore")
	tp := newTopology(t)
	ns := tp.node.NS
	var load *netns.Load
	err := ns.Do(func() error {
		r, src, p, stop, err := startLegacy(ns, time.Second)
		if err != nil {
			return err
		}
		defer stop()
		load = tp.load()

		// Another program takes the lock and keeps it until we let go.
		lock, err := os.OpenFile("/run/xtables.lock", os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			return err
		}
		defer lock.Close()
		if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
			return err
		}
		locked := true
		unlock := func() {
			if locked {
				_ = unix.Flock(int(lock.Fd()), unix.LOCK_UN)
				locked = false
			}
		}
		defer unlock()

		// A check lists a chain (the first after a sync, and every tenth,
		// list) and waits for the lock: go-iptables passes --wait.
		var check []int
		if !wait.Poll(60*time.Second, func() bool { check = ns.Processes("--wait"); return len(check) > 0 }) {
			return fmt.Errorf("no integrity check came to wait for the lock")
		}
		checkGone := func() bool {
			for _, pid := range check {
				if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
					return false
				}
			}
			return true
		}
		want := withLive(snapshot(map[string]int{"web": 3, "db": 1}))
		src.set(want)
		p.RequestSync()
		// The restore fails after its own 5 s while the check still waits
		// (it waits 10 s): the sync did not queue behind it.
		failed := func() bool { return syncFailing(p) }
		if !wait.Poll(30*time.Second, func() bool { return failed() || checkGone() }) {
			return fmt.Errorf("the change neither failed nor waited for the check")
		}
		if !failed() {
			return fmt.Errorf("the change's restore waited until the integrity check gave up")
		}
		if lastErr := lastRefusal(p); !strings.Contains(lastErr, iptables.ErrLockBusy.Error()) && !strings.Contains(lastErr, "xtables lock") {
			t.Errorf("the failed sync does not say the lock was busy: %v", lastErr)
		}
		// The check gives up after its 10 s: inconclusive, not broken.
		if !wait.Poll(30*time.Second, func() bool { return p.BusyChecks() > 0 }) {
			return fmt.Errorf("no check reported the busy lock")
		}
		if _, broken := p.CheckCounts(); broken > 0 {
			t.Errorf("%d checks called the rules broken while they could not look", broken)
		}
		unlock()
		if !wait.Poll(40*time.Second, func() bool {
			got, _ := hostChains(t, r)
			return len(got["nat"]) == len(wantChains(proxier.Render(want, cfg()))["nat"])
		}) {
			return fmt.Errorf("did not converge after the lock was released")
		}
		got, _ := hostChains(t, r)
		sameChains(t, "after the lock", got, wantChains(proxier.Render(want, cfg())))
		return nil
	})
	if load != nil {
		noFailures(t, "check waiting for the lock", load, 20)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// Someone flushes the nat table, or a firewall tool rewrites the filter
// table without our chains: the check every sync period notices (the
// canary and top-level chains, the jumps) and a full sync restores
// everything.
func TestFlushedAndRewrittenTablesAreRestored(t *testing.T) {
	netns.RequireRoot(t, "iptables-legacy-restore", "iptables-nft-restore")
	for _, backend := range backends {
		t.Run(string(backend), func(t *testing.T) { flushedAndRewritten(t, backend) })
	}
}

// flushedAndRewritten breaks the rules from outside, three ways, and waits
// for the loop's integrity check to notice and a full sync to repair. On
// legacy the check reads the tables' summaries first, and lists chains only
// when a table changed.
func flushedAndRewritten(t *testing.T, backend iptables.Backend) {
	ns := netns.New(t, "flush")
	err := ns.Do(func() error {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		r, err := iptables.NewRunner(ctx, iptables.IPv4, backend)
		if err != nil {
			return err
		}
		snap := snapshot(map[string]int{"web": 2, "db": 1})
		src := &source{snap: snap}
		p := proxier.New(proxier.LoopConfig{MinSyncPeriod: 10 * time.Millisecond, SyncPeriod: 500 * time.Millisecond}, src, proxier.NewSyncer(cfg(), r))
		defer runLoop(ctx, ns, p)()
		want := wantChains(proxier.Render(snap, cfg()))
		intact := func() bool {
			got, jumps := hostChains(t, r)
			for _, table := range []string{"nat", "filter"} {
				for name, n := range want[table] {
					if have, ok := got[table][name]; !ok || have != n {
						return false
					}
				}
			}
			return strings.Join(jumps, ",") == strings.Join(wantJumps(), ",")
		}
		if !wait.Poll(30*time.Second, intact) {
			t.Fatal("no first sync")
		}
		// The check runs on its own goroutine, which must act in the
		// loop's namespace: on intact rules it finds nothing missing.
		if !wait.Poll(30*time.Second, func() bool { ok, _ := p.CheckCounts(); return ok >= 2 }) {
			t.Fatal("the integrity check never passed")
		}
		if _, failed := p.CheckCounts(); failed > 0 {
			t.Fatalf("%d integrity checks failed on intact rules", failed)
		}
		for _, fault := range []struct {
			name, restore string
			noflush       bool
		}{
			{"iptables -t nat -F", "*nat\n-F\nCOMMIT\n", true},
			{"a firewall rewriting the filter table", "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n", false},
			{"our canary deleted", "*nat\n-X SWY-PROXY-CANARY\nCOMMIT\n", true},
		} {
			args := []string{"iptables-" + string(backend) + "-restore"}
			if fault.noflush {
				args = append(args, "--noflush")
			}
			cmd := exec.Command(args[0], args[1:]...)
			cmd.Stdin = strings.NewReader(fault.restore)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%s: %v: %s", fault.name, err, out)
			}
			if intact() {
				t.Fatalf("%s did not break anything", fault.name)
			}
			start := time.Now()
			if !wait.Poll(30*time.Second, intact) {
				t.Fatalf("%s: rules not restored", fault.name)
			}
			t.Logf("%s: restored after %v", fault.name, time.Since(start).Round(10*time.Millisecond))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// iptables-restore killed with SIGKILL in the middle of a large batch: the
// kernel holds either the old table or the new one, never a half-written
// mix, and the next sync converges.
func TestRestoreKilledMidway(t *testing.T) {
	netns.RequireRoot(t, "iptables-nft-restore")
	tp := newTopology(t)
	ns := tp.node.NS
	var load *netns.Load
	err := ns.Do(func() error {
		ctx := context.Background()
		r, err := iptables.NewRunner(ctx, iptables.IPv4, iptables.BackendNFT)
		if err != nil {
			return err
		}
		small := map[string]int{}
		for i := 0; i < 20; i++ {
			small[fmt.Sprintf("s%03d", i)] = 2
		}
		big := map[string]int{}
		for i := 0; i < 4000; i++ {
			big[fmt.Sprintf("b%04d", i)] = 2
		}
		s := proxier.NewSyncer(cfg(), r)
		if _, err := s.Sync(ctx, withLive(snapshotN(small))); err != nil {
			return err
		}
		load = tp.load()
		before, _ := hostChains(t, r)
		oldCount, newCount := len(before["nat"]), len(wantChains(proxier.Render(withLive(snapshotN(big)), cfg()))["nat"])

		done := make(chan error, 1)
		go func() {
			done <- ns.Do(func() error { _, err := s.Sync(ctx, withLive(snapshotN(big))); return err })
		}()
		killed := wait.Poll(20*time.Second, func() bool {
			return ns.Kill("iptables-nft-restore -w 5 --noflush") > 0
		})
		syncErr := <-done
		after, _ := hostChains(t, r)
		count := len(after["nat"])
		t.Logf("killed=%v sync error=%v; nat chains old=%d new=%d now=%d", killed, syncErr, oldCount, newCount, count)
		if count != oldCount && count != newCount {
			t.Fatalf("half-written table: %d chains, want %d (old) or %d (new)", count, oldCount, newCount)
		}
		if killed && syncErr == nil {
			t.Error("a killed restore was reported as success")
		}
		if _, err := s.Sync(ctx, withLive(snapshotN(big))); err != nil {
			t.Fatalf("the next sync: %v", err)
		}
		final, _ := hostChains(t, r)
		sameChains(t, "after the killed restore", final, wantChains(proxier.Render(withLive(snapshotN(big)), cfg())))
		return nil
	})
	if load != nil {
		noFailures(t, "restore killed midway", load, 20)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// snapshotN is snapshot for more Services than one /24 of cluster IPs holds.
func snapshotN(services map[string]int) *proxier.Snapshot {
	snap := proxier.NewSnapshot()
	names := make([]string, 0, len(services))
	for n := range services {
		names = append(names, n)
	}
	sort.Strings(names)
	for i, name := range names {
		sp := proxier.ServicePortName{Namespace: "default", Name: name, Port: "http", Protocol: v1.ProtocolTCP}
		snap.Services[sp] = &proxier.ServicePort{Name: sp, Port: 80, ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})}}
		for e := 0; e < services[name]; e++ {
			snap.Endpoints[sp] = append(snap.Endpoints[sp], proxier.Endpoint{
				Addr: netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(e + 1)}), Port: 8080, Ready: true, Serving: true})
		}
	}
	return snap
}

// A newer version with a different chain layout takes over a node without
// a gap: the old version's chains (here: other names for every Service and
// endpoint chain) carry traffic until one atomic full sync points the
// dispatch at the new ones and deletes the old.
func TestUpgradeFromADifferentChainLayout(t *testing.T) {
	netns.RequireRoot(t, "iptables-nft-restore")
	tp := newTopology(t)
	snap := withLive(snapshot(map[string]int{"other": 2}))
	old := proxier.RestoreText(proxier.Render(snap, cfg()))
	old = strings.NewReplacer("SWY-SVC-", "SWY-SVCV1-", "SWY-SEP-", "SWY-SEPV1-").Replace(old)
	if out, err := tp.node.RunInput([]byte(old), "iptables-nft-restore", "--noflush"); err != nil {
		t.Fatalf("installing the old layout: %v\n%s", err, out)
	}
	reachAll(t, tp.client.NS, liveAddr, []string{"pod1", "pod2"}, 100)

	load := tp.load()
	err := tp.node.Do(func() error {
		r, err := iptables.NewRunner(context.Background(), iptables.IPv4, iptables.BackendNFT)
		if err != nil {
			return err
		}
		if !wait.Poll(10*time.Second, func() bool { return load.Requests() > 20 }) {
			return fmt.Errorf("the load loop did not start")
		}
		_, err = proxier.NewSyncer(cfg(), r).Sync(context.Background(), snap)
		if err != nil {
			return err
		}
		if !wait.Poll(10*time.Second, func() bool { return load.Requests() > 60 }) {
			return fmt.Errorf("the load loop stalled after the upgrade")
		}
		saved, err := r.Save(context.Background(), "nat")
		if err != nil {
			return err
		}
		if strings.Contains(string(saved), "SWY-SVCV1-") || strings.Contains(string(saved), "SWY-SEPV1-") {
			return fmt.Errorf("the old layout's chains are still there")
		}
		return nil
	})
	noFailures(t, "upgrade", load, 60)
	if err != nil {
		t.Fatal(err)
	}
	reachAll(t, tp.client.NS, liveAddr, []string{"pod1", "pod2"}, 100)
}

// startLegacy runs a sync loop on the legacy backend inside ns, for the
// live Service and "web" with two endpoints, and waits for its first sync.
func startLegacy(ns *netns.NS, syncPeriod time.Duration) (*iptables.Runner, *source, *proxier.Proxier, func(), error) {
	r, err := iptables.NewRunner(context.Background(), iptables.IPv4, iptables.BackendLegacy)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	src := &source{snap: withLive(snapshot(map[string]int{"web": 2}))}
	p := proxier.New(proxier.LoopConfig{MinSyncPeriod: 10 * time.Millisecond, SyncPeriod: syncPeriod}, src, proxier.NewSyncer(cfg(), r))
	stop := runLoop(context.Background(), ns, p)
	if err := firstSync(p); err != nil {
		stop()
		return nil, nil, nil, nil, err
	}
	return r, src, p, stop, nil
}

// runLoop runs p's sync loop on a goroutine inside ns (the loop runs
// iptables from its own goroutine, which must sit in the namespace too)
// and returns what stops it: cancel and wait.
func runLoop(ctx context.Context, ns *netns.NS, p *proxier.Proxier) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = ns.Do(func() error { p.Run(ctx); return nil })
	}()
	return func() { cancel(); <-done }
}

// syncFailing reports whether the last sync of the loop's family failed.
func syncFailing(p *proxier.Proxier) bool {
	_, failing := p.Syncers()[0].LastSynced()
	return failing
}

// lastRefusal is the error of the last restore that failed, as
// /debug/rules shows it.
func lastRefusal(p *proxier.Proxier) string {
	_, failed := p.Syncers()[0].Batches()
	return failed.Error
}

// firstSync waits for the loop's first successful sync.
func firstSync(p *proxier.Proxier) error {
	select {
	case <-p.Synced():
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("no first sync")
	}
}
