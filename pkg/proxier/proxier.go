package proxier

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
	"github.com/switchyard-proxy/switchyard/pkg/metrics"
)

// SnapshotSource hands the sync loop the current desired state. It is called
// once per sync.
type SnapshotSource interface {
	Snapshot() *Snapshot
}

// LoopConfig sets the sync loop's timing.
type LoopConfig struct {
	// MinSyncPeriod is the least time between two syncs; bursts of changes
	// inside it collapse into one sync.
	MinSyncPeriod time.Duration
	// SyncPeriod is the longest the loop goes without checking that its
	// rules are intact and retrying a failed sync.
	SyncPeriod time.Duration
	// FullSyncPeriod is the longest between two full syncs.
	FullSyncPeriod time.Duration
}

// Proxier runs the sync loop: it collapses sync requests, renders the
// snapshot for each IP family and applies it through that family's Syncer.
type Proxier struct {
	cfg     LoopConfig
	source  SnapshotSource
	syncers []*Syncer

	// HostAddrs, when set, supplies the node's interface addresses for
	// each snapshot (for --nodeport-addresses).
	HostAddrs func() []netip.Addr
	// OnSynced, when set, is called after every successful sync with the
	// snapshot that was applied (the health check servers follow it).
	OnSynced func(*Snapshot)

	requests chan struct{}

	mu         sync.Mutex
	lastSync   time.Time
	lastErr    error
	lastResult []SyncResult
	syncCount  int
	synced     chan struct{}
	syncedOnce sync.Once
	// pendingSince is when the oldest sync request not yet served was
	// made; zero when none is pending.
	pendingSince time.Time
	lastSnap     *Snapshot

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
	return &Proxier{cfg: cfg, source: source, syncers: syncers, requests: make(chan struct{}, 1), synced: make(chan struct{})}
}

// RequestSync asks for a sync soon. It never blocks; requests made while
// one is pending collapse into it.
func (p *Proxier) RequestSync() {
	p.markPending()
	select {
	case p.requests <- struct{}{}:
	default:
	}
}

func (p *Proxier) markPending() {
	p.mu.Lock()
	if p.pendingSince.IsZero() {
		p.pendingSince = time.Now()
	}
	p.mu.Unlock()
	for _, s := range p.syncers {
		metrics.SyncLastQueuedTimestamp.WithLabelValues(string(s.Config.Family)).SetToCurrentTime()
	}
}

// Healthy reports whether every requested sync has completed, or the oldest
// one still pending was requested less than twice the sync period ago (as
// kube-proxy judges its own health).
func (p *Proxier) Healthy() bool {
	_, overdue := p.overdue()
	return !overdue
}

// overdue returns when the oldest sync request not yet served was made,
// and whether that was twice the sync period ago or longer.
func (p *Proxier) overdue() (time.Time, bool) {
	p.mu.Lock()
	pending := p.pendingSince
	p.mu.Unlock()
	return pending, !pending.IsZero() && time.Since(pending) >= 2*p.cfg.SyncPeriod
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
	pending, overdue := p.overdue()
	var out []FamilyHealth
	for _, s := range p.syncers {
		last, failing := s.LastSynced()
		out = append(out, FamilyHealth{Family: s.Config.Family, LastSynced: last,
			Healthy: !overdue || (!failing && last.After(pending))})
	}
	return out
}

// Synced is closed after the first successful sync.
func (p *Proxier) Synced() <-chan struct{} { return p.synced }

// Status reports the last sync's time and error and how many syncs ran.
func (p *Proxier) Status() (time.Time, error, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastSync, p.lastErr, p.syncCount
}

// SyncOnce renders and applies the current snapshot for every family. A
// failure of one family does not stop the others.
func (p *Proxier) SyncOnce(ctx context.Context) error {
	_, err := p.syncOnce(ctx)
	return err
}

// syncOnce is SyncOnce; more is true when a bounded sync left changes for
// the next one.
func (p *Proxier) syncOnce(ctx context.Context) (more bool, _ error) {
	logger := klog.FromContext(ctx)
	start := time.Now()
	p.mu.Lock()
	var queued time.Duration
	if !p.pendingSince.IsZero() {
		queued = start.Sub(p.pendingSince)
	}
	p.mu.Unlock()
	snap := p.source.Snapshot()
	if p.HostAddrs != nil {
		snap.HostAddrs = p.HostAddrs()
	}
	var errs []error
	var results []SyncResult
	for _, s := range p.syncers {
		res, err := s.Sync(ctx, snap)
		if err != nil {
			logger.Error(err, "Sync failed; the next sync will be full", "family", s.Config.Family)
			errs = append(errs, err)
			continue
		}
		res.Phases.Queue = queued
		res.Phases.observe(string(s.Config.Family))
		results = append(results, res)
		more = more || res.Pending > 0
		now := time.Now()
		for _, t := range snap.TriggerTimes {
			if d := now.Sub(t); d >= 0 {
				metrics.NetworkProgrammingDuration.WithLabelValues(string(s.Config.Family)).Observe(d.Seconds())
			}
		}
	}
	err := errors.Join(errs...)
	p.mu.Lock()
	p.lastSync = time.Now()
	p.lastErr = err
	p.lastResult = results
	p.syncCount++
	if err == nil && !p.pendingSince.IsZero() && !p.pendingSince.After(start) {
		p.pendingSince = time.Time{}
	}
	if err == nil {
		p.lastSnap = snap
	}
	p.mu.Unlock()
	if err == nil {
		if p.OnSynced != nil {
			p.OnSynced(snap)
		}
		p.syncedOnce.Do(func() { close(p.synced) })
		logger.V(1).Info("Synced", "services", len(snap.Services), "results", results)
	}
	return more, err
}

// Run is the sync loop. It syncs at once, then whenever a sync is requested
// (at most once per MinSyncPeriod), retries failures with backoff, and every
// SyncPeriod checks the rules are intact (and does a full sync when they are
// not, or when the last full sync is older than FullSyncPeriod).
func (p *Proxier) Run(ctx context.Context) {
	logger := klog.FromContext(ctx)
	checkDone := make(chan struct{})
	join, err := sameNetnsAs()
	if err != nil {
		logger.Error(err, "Cannot tell this thread's network namespace; the integrity check runs wherever Go schedules it")
		join = func() error { return nil }
	}
	go func() {
		defer close(checkDone)
		if err := join(); err != nil {
			logger.Error(err, "Cannot enter the sync loop's network namespace; no integrity check will run")
			return
		}
		p.checkLoop(ctx)
	}()
	defer func() { <-checkDone }()
	ticker := time.NewTicker(p.cfg.SyncPeriod)
	defer ticker.Stop()
	var lastStart time.Time
	pending := true
	backoff := time.Duration(0)
	var retry <-chan time.Time
	for {
		if pending {
			if wait := p.cfg.MinSyncPeriod - time.Since(lastStart); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
			}
			select { // this sync covers any request made so far
			case <-p.requests:
			default:
			}
			pending = false
			lastStart = time.Now()
			more, err := p.syncOnce(ctx)
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
		case <-p.requests:
			pending = true
		case <-retry:
			pending = true
		case <-ticker.C:
			for _, s := range p.syncers {
				if time.Since(s.LastFull()) > p.cfg.FullSyncPeriod {
					s.ForceFull()
					pending = true
				}
			}
			if _, err, _ := p.Status(); err != nil {
				pending = true
			}
		}
	}
}

func nextBackoff(cur, limit time.Duration) time.Duration {
	switch {
	case cur == 0:
		cur = 500 * time.Millisecond
	default:
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
		for _, s := range p.syncers {
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
			p.RequestSync()
		}
	}
}
