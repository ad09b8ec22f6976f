package proxier

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
	"github.com/switchyard-proxy/switchyard/pkg/metrics"
)

// SnapshotSource hands the sync loop the current desired state. It is called
// once per sync, and takes the changes pending since the last call with it
// (the change counts and trigger times of the metrics).
type SnapshotSource interface {
	TakeSnapshot() *Snapshot
}

// endpointWaiter is a SnapshotSource that can tell when a pending change is
// a Service still waiting for its first EndpointSlice.
type endpointWaiter interface {
	AwaitsEndpoints() bool
}

// ChangeNotifier is a SnapshotSource that says when it has changes: the
// loop requests a sync on each value from Changes.
type ChangeNotifier interface {
	Changes() <-chan struct{}
}

// LoopConfig sets the sync loop's timing and its hooks.
type LoopConfig struct {
	// MinSyncPeriod is the least time between two syncs; bursts of changes
	// inside it collapse into one sync.
	MinSyncPeriod time.Duration
	// SyncPeriod is the longest the loop goes without checking that its
	// rules are intact and retrying a failed sync.
	SyncPeriod time.Duration
	// FullSyncPeriod is the longest between two full syncs.
	FullSyncPeriod time.Duration
	// CPUShare, when positive, is the share of one core the sync loops
	// and their iptables processes may use on average under sustained
	// churn; syncs are spaced out to keep to it (see cpuBudget).
	CPUShare float64

	// HostAddrs, when set, supplies the node's interface addresses for
	// each snapshot (for --nodeport-addresses).
	HostAddrs func() []netip.Addr
	// OnSynced, when set, is called after every successful sync with the
	// snapshot that was applied (the health check servers follow it).
	OnSynced func(*Snapshot)
}

// Proxier runs the sync loops, one per IP family, as kube-proxy does: each
// collapses sync requests, renders the snapshot for its family and applies
// it through that family's Syncer, so a slow restore of one family never
// delays the other's changes.
type Proxier struct {
	cfg     LoopConfig
	source  SnapshotSource
	syncers []*Syncer
	loops   []*familyLoop
	budget  *cpuBudget
	// snapMu serialises taking snapshots: each hands over the trigger times
	// of the changes it folds in, which every family must see once.
	snapMu sync.Mutex

	mu         sync.Mutex
	lastSync   time.Time
	syncCount  int
	synced     chan struct{}
	syncedOnce sync.Once
	lastSnap   *Snapshot

	checksOK, checksFailed, checksBusy atomic.Int64
}

// CheckCounts reports how many integrity checks found the rules in place,
// and how many did not.
func (p *Proxier) CheckCounts() (ok, failed int64) {
	return p.checksOK.Load(), p.checksFailed.Load()
}

// BusyChecks reports how many integrity checks saw nothing because another
// program held the xtables lock longer than we wait.
func (p *Proxier) BusyChecks() int64 { return p.checksBusy.Load() }

// Syncers returns the per-family syncers.
func (p *Proxier) Syncers() []*Syncer { return p.syncers }

// LastSnapshot is the snapshot of the last successful sync, or nil.
func (p *Proxier) LastSnapshot() *Snapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastSnap
}

// New returns a proxier over one syncer per IP family the node has.
func New(cfg LoopConfig, source SnapshotSource, syncers ...*Syncer) *Proxier {
	if cfg.FullSyncPeriod <= 0 {
		cfg.FullSyncPeriod = time.Hour
	}
	if cfg.SyncPeriod <= 0 {
		cfg.SyncPeriod = 30 * time.Second
	}
	p := &Proxier{cfg: cfg, source: source, syncers: syncers, synced: make(chan struct{}),
		budget: newCPUBudget(cfg.CPUShare, cfg.SyncPeriod/2)}
	if p.budget != nil {
		metrics.SetCPUBudgetFunc(p.budget.Balance)
	}
	for _, s := range syncers {
		p.loops = append(p.loops, &familyLoop{s: s, requests: make(chan struct{}, 1)})
	}
	return p
}

// familyLoop is one IP family's sync loop state.
type familyLoop struct {
	s        *Syncer
	requests chan struct{}
	// Guarded by Proxier.mu: pendingSince is when the oldest sync request
	// not yet served was made (zero when none is pending); lastErr is the
	// last sync's error; synced is true after its first successful sync.
	pendingSince time.Time
	lastErr      error
	synced       bool
	// lastTook is how long the last sync took (guarded by Proxier.mu).
	lastTook time.Duration
	// triggers are change trigger times other families' snapshots took
	// first (guarded by Proxier.snapMu).
	triggers []time.Time
}

// RequestSync asks for a sync soon. It never blocks; requests made while
// one is pending collapse into it.
func (p *Proxier) RequestSync() {
	for _, l := range p.loops {
		p.request(l)
	}
}

// request asks one family's loop for a sync.
func (p *Proxier) request(l *familyLoop) {
	p.mu.Lock()
	if l.pendingSince.IsZero() {
		l.pendingSince = time.Now()
	}
	p.mu.Unlock()
	metrics.SyncLastQueuedTimestamp.WithLabelValues(string(l.s.Config.Family)).SetToCurrentTime()
	select {
	case l.requests <- struct{}{}:
	default:
	}
}

// Healthy reports whether every requested sync has completed, or the oldest
// one still pending was requested less than twice the sync period ago (as
// kube-proxy judges its own health).
func (p *Proxier) Healthy() bool {
	return !p.overdue()
}

// overdue reports whether any family has a sync request not yet served
// that was made twice the sync period ago or longer.
func (p *Proxier) overdue() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.loops {
		if p.overdueLocked(l) {
			return true
		}
	}
	return false
}

func (p *Proxier) overdueLocked(l *familyLoop) bool {
	return !l.pendingSince.IsZero() && time.Since(l.pendingSince) >= 2*p.cfg.SyncPeriod
}

// FamilyHealth is one IP family's part of the health answer.
type FamilyHealth struct {
	Family v1.IPFamily
	// LastSynced is when its rules were last synced; zero before the
	// first time.
	LastSynced time.Time
	// Healthy is false while a sync requested more than twice the sync
	// period ago has not yet succeeded for this family.
	Healthy bool
}

// FamilyHealth reports each IP family's health, as kube-proxy's health
// answer lists it per family.
func (p *Proxier) FamilyHealth() []FamilyHealth {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []FamilyHealth
	for _, l := range p.loops {
		last, _ := l.s.LastSynced()
		out = append(out, FamilyHealth{Family: l.s.Config.Family, LastSynced: last, Healthy: !p.overdueLocked(l)})
	}
	return out
}

// Synced is closed after the first successful sync.
func (p *Proxier) Synced() <-chan struct{} { return p.synced }

// status reports the last sync's time, how many family syncs ran and the
// families' last errors (nil when each family's last sync succeeded).
func (p *Proxier) status() (time.Time, int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, l := range p.loops {
		errs = append(errs, l.lastErr)
	}
	return p.lastSync, p.syncCount, errors.Join(errs...)
}

// SyncOnce renders and applies the current snapshot for every family, one
// after the other. A failure of one family does not stop the others.
func (p *Proxier) SyncOnce(ctx context.Context) error {
	var errs []error
	for _, l := range p.loops {
		if _, err := p.syncFamily(ctx, l); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// snapshotFor takes the current snapshot for one family. Trigger times (for
// the network programming latency) are drained by whichever family takes a
// snapshot first, so each snapshot hands them to the other families too.
func (p *Proxier) snapshotFor(l *familyLoop) *Snapshot {
	p.snapMu.Lock()
	defer p.snapMu.Unlock()
	snap := p.source.TakeSnapshot()
	fresh := snap.TriggerTimes
	for _, o := range p.loops {
		if o != l {
			o.triggers = append(o.triggers, fresh...)
		}
	}
	if len(l.triggers) > 0 {
		snap.TriggerTimes = slices.Concat(l.triggers, fresh)
		l.triggers = nil
	}
	if p.cfg.HostAddrs != nil {
		snap.HostAddrs = p.cfg.HostAddrs()
	}
	return snap
}

// syncFamily syncs one family; more is true when a bounded sync left
// changes for the next one.
func (p *Proxier) syncFamily(ctx context.Context, l *familyLoop) (more bool, _ error) {
	logger := klog.FromContext(ctx)
	s := l.s
	start := time.Now()
	p.mu.Lock()
	var queued time.Duration
	if !l.pendingSince.IsZero() {
		queued = start.Sub(l.pendingSince)
	}
	p.mu.Unlock()
	snap := p.snapshotFor(l)
	p.mu.Lock()
	first := !l.synced
	p.mu.Unlock()
	charge := func() {}
	if !first { // a cold start is not churn: the budget is for what follows
		charge = p.budget.Start()
	}
	res, err := s.Sync(ctx, snap)
	charge()
	took := time.Since(start)
	if err != nil {
		logger.Error(err, "Sync failed; the next sync will be full", "family", s.Config.Family)
	} else {
		res.Phases.Queue = queued
		res.Phases.observe(string(s.Config.Family))
		now := time.Now()
		for _, t := range snap.TriggerTimes {
			if d := now.Sub(t); d >= 0 {
				metrics.NetworkProgrammingDuration.WithLabelValues(string(s.Config.Family)).Observe(d.Seconds())
			}
		}
	}
	p.mu.Lock()
	p.lastSync = time.Now()
	l.lastErr = err
	l.lastTook = took
	p.syncCount++
	if err == nil && !l.pendingSince.IsZero() && !l.pendingSince.After(start) {
		l.pendingSince = time.Time{}
	}
	allSynced := false
	if err == nil {
		p.lastSnap = snap
		l.synced = true
		allSynced = true
		for _, o := range p.loops {
			allSynced = allSynced && o.synced
		}
	}
	p.mu.Unlock()
	if err != nil {
		return false, err
	}
	if p.cfg.OnSynced != nil {
		p.cfg.OnSynced(snap)
	}
	if allSynced {
		p.syncedOnce.Do(func() { close(p.synced) })
	}
	logger.V(1).Info("Synced", "family", s.Config.Family, "services", len(snap.Services), "result", res)
	return res.Pending > 0, nil
}

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
// waitToSync).
const maxSettle = 50 * time.Millisecond

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
				klog.FromContext(ctx).V(2).Info("Sync waited for the CPU budget", "family", family, "wait", w)
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
