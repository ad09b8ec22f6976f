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

// status reports how many family syncs ran and the families' last errors
// (nil when each family's last sync succeeded).
func (p *Proxier) status() (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, l := range p.loops {
		errs = append(errs, l.lastErr)
	}
	return p.syncCount, errors.Join(errs...)
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
