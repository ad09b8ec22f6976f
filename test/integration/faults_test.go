package integration

import (
	"context"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
	"github.com/switchyard-proxy/switchyard/pkg/proxier"
	"github.com/switchyard-proxy/switchyard/test/netns"
	"github.com/switchyard-proxy/switchyard/test/wait"
)

type source struct {
	mu   sync.Mutex
	snap *proxier.Snapshot
}

func (s *source) Snapshot() *proxier.Snapshot {
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
	ns := netns.New(t, "lock")
	err := ns.Do(func() error {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		r, err := iptables.NewRunner(ctx, iptables.IPv4, iptables.BackendLegacy)
		if err != nil {
			return err
		}
		src := &source{snap: snapshot(map[string]int{"web": 2})}
		p := proxier.New(proxier.LoopConfig{MinSyncPeriod: 10 * time.Millisecond, SyncPeriod: 2 * time.Second}, src, proxier.NewSyncer(cfg(), r))
		// The loop runs iptables from its own goroutine: that goroutine
		// must sit in the namespace too.
		loopDone := make(chan struct{})
		go func() {
			defer close(loopDone)
			_ = ns.Do(func() error { p.Run(ctx); return nil })
		}()
		defer func() { cancel(); <-loopDone }()
		select {
		case <-p.Synced():
		case <-time.After(30 * time.Second):
			t.Fatal("no first sync")
		}

		// Hold the lock for 8 s, longer than the restore's 5 s wait.
		holder := exec.Command("flock", "/run/xtables.lock", "sleep", "8")
		if err := holder.Start(); err != nil {
			return err
		}
		defer holder.Wait()
		if !wait.Poll(5*time.Second, func() bool {
			return exec.Command("flock", "-n", "/run/xtables.lock", "true").Run() != nil
		}) {
			t.Fatal("the lock holder never took the lock")
		}
		want := snapshot(map[string]int{"web": 3, "db": 1})
		src.set(want)
		p.RequestSync()

		if !wait.Poll(20*time.Second, func() bool { _, err, _ := p.Status(); return err != nil }) {
			t.Fatal("no restore failed while the lock was held")
		}
		_, lastErr, _ := p.Status()
		if !strings.Contains(lastErr.Error(), "xtables lock") && !strings.Contains(lastErr.Error(), "exit status") {
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
		if _, err, _ := p.Status(); err != nil {
			t.Errorf("still failing: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
