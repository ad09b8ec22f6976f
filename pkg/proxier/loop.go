package proxier

import (
	"context"
	"errors"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
	"github.com/switchyard-proxy/switchyard/pkg/metrics"
)

// Run runs the sync loops, one per family, until ctx ends. Each syncs at
// once, then whenever a sync is requested (at most once per MinSyncPeriod),
// retries failures with backoff, and every SyncPeriod makes its next sync
// full when the last full one is older than FullSyncPeriod. Beside them,
// the integrity check looks every SyncPeriod that the rules are intact.
func (p *Proxier) Run(ctx context.Context) {
	logger := klog.FromContext(ctx)
	var wg sync.WaitGroup
	join, release, err := sameNetnsAs()
	if err != nil {
		logger.Error(err, "Cannot tell this thread's network namespace; the integrity check and the sync loops run wherever Go schedules them")
		join, release = func() error { return nil }, func() {}
	}
	defer release()
	if n, ok := p.source.(ChangeNotifier); ok {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.followChanges(ctx, n.Changes())
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := join(); err != nil {
			logger.Error(err, "Cannot enter the sync loop's network namespace; no integrity check will run")
			return
		}
		p.checkLoop(ctx)
	}()
	if len(p.loops) == 0 {
		wg.Wait()
		return
	}
	for _, l := range p.loops[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := join(); err != nil {
				logger.Error(err, "Cannot enter the network namespace; this family is not synced", "family", l.s.Config.Family)
				return
			}
			p.runFamily(ctx, l)
		}()
	}
	p.runFamily(ctx, p.loops[0])
	wg.Wait()
}

// followChanges requests a sync for every change the source announces.
func (p *Proxier) followChanges(ctx context.Context, changes <-chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-changes:
			p.RequestSync()
		}
	}
}

// runFamily is one family's sync loop.
func (p *Proxier) runFamily(ctx context.Context, l *familyLoop) {
	logger := klog.FromContext(ctx).WithValues("family", l.s.Config.Family)
	ticker := time.NewTicker(p.cfg.SyncPeriod)
	defer ticker.Stop()
	var lastStart time.Time
	pending := true
	backoff := time.Duration(0)
	var retry <-chan time.Time
	for {
		if pending {
			if !p.waitToSync(ctx, l, lastStart) {
				return
			}
			select { // this sync covers any request made so far
			case <-l.requests:
			default:
			}
			pending = false
			lastStart = time.Now()
			more, err := p.syncFamily(ctx, l)
			if err != nil {
				backoff = nextBackoff(backoff, p.cfg.SyncPeriod)
				logger.Info("Retrying sync after backoff", "backoff", backoff)
				retry = time.After(backoff)
			} else {
				backoff, retry = 0, nil
				pending = more // a bounded sync left work: go on at once
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-l.requests:
			pending = true
		case <-retry:
			pending = true
		case <-ticker.C:
			if time.Since(l.s.LastFull()) > p.cfg.FullSyncPeriod {
				l.s.ForceFull()
				pending = true
			}
			p.mu.Lock()
			failing := l.lastErr != nil
			p.mu.Unlock()
			if failing {
				pending = true
			}
		}
	}
}

// maxSettle bounds how long a change waits for the next one (see
// waitToSync). At 30,000 Services the API server took about 60 ms between
// a Service's create and its EndpointSlice's on this project's machines,
// while a sync for the Service alone costs its render and a restore, about
// 100 ms at that size before the sync with its endpoints can start.
const maxSettle = 100 * time.Millisecond

// waitToSync waits until the family's next sync may start: MinSyncPeriod
// after the last one started; while a new Service waits for its first
// EndpointSlice (which the EndpointSlice controller, or whoever made the
// Service, creates milliseconds later), until the slice comes or a quarter
// of the last sync's time (at most maxSettle) has passed since the change,
// because a sync for the Service alone would cost the whole sync again;
// and the CPU budget not in deficit (checked again after each wait: the
// other family's sync may have spent it meanwhile). It returns false when
// ctx ends first.
func (p *Proxier) waitToSync(ctx context.Context, l *familyLoop, lastStart time.Time) bool {
	family := string(l.s.Config.Family)
	waiter, _ := p.source.(endpointWaiter)
	// The time spent waiting for the budget, logged once when the sync
	// starts: while changes stream in, each of them cuts a wait short.
	var budgetWait time.Duration
	for {
		wait := p.cfg.MinSyncPeriod - time.Since(lastStart)
		var settle time.Duration
		if waiter != nil && waiter.AwaitsEndpoints() {
			p.mu.Lock()
			if !l.pendingSince.IsZero() {
				settle = min(l.lastTook/4, maxSettle) - time.Since(l.pendingSince)
			}
			p.mu.Unlock()
		}
		wait = max(wait, settle)
		throttle := p.budget.Delay()
		if throttle > wait {
			wait = throttle
		} else {
			throttle = 0
		}
		if wait <= 0 {
			if budgetWait > 0 {
				klog.FromContext(ctx).V(2).Info("Sync waited for the CPU budget", "family", family, "wait", budgetWait)
			}
			return true
		}
		t := time.NewTimer(wait)
		began := time.Now()
		// The time spent waiting for the budget, also when a new request
		// cuts the wait short.
		throttled := func() {
			if throttle > 0 {
				w := min(time.Since(began), throttle)
				metrics.SyncCPUThrottled.WithLabelValues(family).Add(w.Seconds())
				budgetWait += w
			}
		}
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-l.requests:
			// Another change: if it was the awaited EndpointSlice, stop
			// settling; the sync that follows covers this request.
			t.Stop()
			throttled()
			continue
		case <-t.C:
		}
		throttled()
	}
}

func nextBackoff(cur, limit time.Duration) time.Duration {
	if cur == 0 {
		cur = 500 * time.Millisecond
	} else {
		cur *= 2
	}
	if cur > limit {
		cur = limit
	}
	return cur
}

// checkLoop checks every SyncPeriod that the rules of the last sync are
// still on the host, and asks for a full sync when they are not. It runs
// beside the sync loop, not in it: on legacy each of the check's iptables
// calls loads the whole table (seconds at 10,000 Services in all), and
// changes must not wait behind it. Its calls take the runner's lock one at
// a time, so a restore waits for at most one of them.
func (p *Proxier) checkLoop(ctx context.Context) {
	logger := klog.FromContext(ctx)
	ticker := time.NewTicker(p.cfg.SyncPeriod)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		for _, l := range p.loops {
			s := l.s
			if s.Rules() == nil {
				continue // not synced yet, or a full sync is already due
			}
			ok, err := s.Check(ctx)
			if ctx.Err() != nil {
				return
			}
			family := string(s.Config.Family)
			if err == nil && ok {
				p.checksOK.Add(1)
				metrics.IntegrityChecks.WithLabelValues(family, "intact").Inc()
				continue
			}
			if errors.Is(err, iptables.ErrLockBusy) {
				p.checksBusy.Add(1)
				metrics.IntegrityChecks.WithLabelValues(family, "busy").Inc()
				logger.Info("Could not check the rules: another program held the xtables lock; checking again next period", "family", s.Config.Family, "err", err)
				continue
			}
			p.checksFailed.Add(1)
			metrics.IntegrityChecks.WithLabelValues(family, "broken").Inc()
			logger.Info("Rules are not intact; running a full sync", "family", s.Config.Family, "err", err)
			p.request(l)
		}
	}
}
