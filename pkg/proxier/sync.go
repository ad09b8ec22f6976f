package proxier

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/switchyard-proxy/switchyard/pkg/conntrack"
	"github.com/switchyard-proxy/switchyard/pkg/iptables"
	"github.com/switchyard-proxy/switchyard/pkg/metrics"
)

// Syncer applies rendered rules for one IP family through a host interface.
// It remembers what it applied, so a partial sync writes only the chains
// whose content changed and deletes the chains that are no longer wanted; a
// full sync reads the host's tables to find every SWY- chain, rewrites all of
// ours and deletes stale ones, all without flushing first, so traffic keeps
// flowing while switchyard restarts.
type Syncer struct {
	Config RenderConfig
	Host   iptables.Interface
	// HostTimeout bounds every call to the host (restore, save, jumps): a
	// hung iptables-restore is killed and the sync retried, never waited on
	// forever. Zero means DefaultHostTimeout.
	HostTimeout time.Duration
	// Conntrack, when set, has stale UDP flows deleted after every sync.
	Conntrack conntrack.Interface
	// MaxRestoreRules bounds the rules one restore writes or deletes (see
	// bound.go); zero means no bound.
	MaxRestoreRules int

	mu       sync.Mutex
	renderer Renderer
	applied  *Rules // what the host holds; nil: unknown, next sync is full
	// appliedSnap is the snapshot applied rules were rendered from.
	appliedSnap *Snapshot
	// wanted is the whole wanted state's rendering while a bounded sync
	// has applied only part of it, so the next step renders nothing twice.
	wanted   *Rules
	lastFull time.Time
	rules    *Rules
	// lastUDP are the UDP frontends of the last successful sync; udpRetry
	// is set while a failed clean-up is to be retried.
	lastUDP  udpFrontends
	udpRetry bool
	// outcome is what syncs leave for readers that must not wait for a
	// sync in progress.
	outcome syncOutcome
	// quarantine holds the Service ports whose rules the kernel refused.
	quarantine map[ServicePortName]quarantined
}

// NewSyncer returns a syncer whose first sync is full.
func NewSyncer(cfg RenderConfig, host iptables.Interface) *Syncer {
	return &Syncer{Config: cfg, Host: host}
}

// ForceFull makes the next sync a full one.
func (s *Syncer) ForceFull() {
	s.mu.Lock()
	s.applied = nil
	s.mu.Unlock()
}

// LastFull is when the last full sync succeeded.
func (s *Syncer) LastFull() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastFull
}

// Rules returns the rules of the last successful sync.
func (s *Syncer) Rules() *Rules {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rules
}

// syncOutcome is what the last syncs left for /healthz and /debug/rules,
// under its own lock: a sync holds the Syncer's lock for as long as it
// runs (minutes for a cold start at 30,000 Services, 5 s waiting for the
// xtables lock), and the health answer must not wait for it.
type syncOutcome struct {
	mu sync.Mutex
	// lastOK is when a sync last succeeded; failing, whether the latest
	// failed (the per-family part of the health answer).
	lastOK  time.Time
	failing bool
	// For /debug/rules: the last batch applied and the last one refused.
	lastBatch, lastFailed Batch
}

// Sync renders the snapshot and applies the difference. Any failure makes the
// next sync full. When the kernel refuses the batch and the refusal can be
// pinned on single Service ports (by bisecting with test restores), those
// are quarantined and everything else is programmed in this same sync.
func (s *Syncer) Sync(ctx context.Context, snap *Snapshot) (SyncResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	res, err := s.syncHeld(ctx, snap)
	s.outcome.mu.Lock()
	s.outcome.failing = err != nil
	if err == nil {
		s.outcome.lastOK = time.Now()
	}
	s.outcome.mu.Unlock()
	return res, err
}

// LastSynced is when a sync last succeeded (zero before the first), and
// whether the latest one failed.
// It never waits for a sync in progress.
func (s *Syncer) LastSynced() (time.Time, bool) {
	s.outcome.mu.Lock()
	defer s.outcome.mu.Unlock()
	return s.outcome.lastOK, s.outcome.failing
}

// syncHeld is Sync, called with mu held.
func (s *Syncer) syncHeld(ctx context.Context, snap *Snapshot) (SyncResult, error) {
	if s.quarantine == nil {
		s.quarantine = map[ServicePortName]quarantined{}
	}
	if s.applied == nil {
		clear(s.quarantine) // a full sync retries every Service
	}
	effective := s.releaseAndFilterQuarantine(snap)
	t0 := time.Now()
	rules := s.renderer.Render(effective, s.Config, s.wanted)
	s.wanted = nil
	if s.applied != nil {
		target, pending := boundedTarget(s.appliedSnap, effective, s.applied, rules, s.MaxRestoreRules)
		if pending > 0 {
			// Render the intermediate state from both renders (no port is
			// rendered again), and keep the wanted one for the next step.
			s.wanted = rules
			rules = s.renderer.Render(target, s.Config, s.applied, rules)
			// Clean conntrack for what is programmed, not yet for the rest.
			res, err := s.syncLocked(ctx, target, target, rules, time.Since(t0))
			res.Pending = pending
			metrics.PendingServicePorts.WithLabelValues(string(s.Config.Family)).Set(float64(pending))
			if err == nil {
				klog.FromContext(ctx).V(2).Info("Applied part of the changes; the rest follows at once",
					"family", s.Config.Family, "pendingServicePorts", pending)
			}
			return res, err
		}
	}
	metrics.PendingServicePorts.WithLabelValues(string(s.Config.Family)).Set(0)
	res, err := s.syncLocked(ctx, snap, effective, rules, time.Since(t0))
	if err == nil || ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
		return res, err
	}
	if errors.Is(err, iptables.ErrLockBusy) {
		// Another program held the lock: no rule was refused, and every
		// test restore of a bisection would wait for the lock in turn.
		return res, err
	}
	offenders := s.findOffenders(ctx, s.releaseAndFilterQuarantine(snap))
	if len(offenders) == 0 {
		return res, err
	}
	logger := klog.FromContext(ctx)
	for _, n := range sortedKeys(offenders) {
		s.quarantine[n] = quarantined{svc: *snap.Services[n], eps: snap.Endpoints[n], reason: offenders[n].Error()}
		logger.Error(offenders[n], "The kernel refuses this Service port's rules; it is left out until it changes or the next full resync",
			"service", n.String(), "family", s.Config.Family)
	}
	metrics.QuarantinedServices.Set(float64(len(s.quarantine)))
	s.applied = nil
	effective = s.releaseAndFilterQuarantine(snap)
	t0 = time.Now()
	rules = s.renderer.Render(effective, s.Config)
	return s.syncLocked(ctx, snap, effective, rules, time.Since(t0))
}

// syncRun is one sync's restores: what they wrote, for the metrics, and
// where the time went.
type syncRun struct {
	s       *Syncer
	ctx     context.Context
	full    bool
	res     SyncResult
	written map[string]int // rules written per table
}

// done records one restore's outcome.
func (r *syncRun) done(batch Batch, err error, size int) error {
	s, fam := r.s, string(r.s.Config.Family)
	if err != nil {
		batch.Error = err.Error()
		s.outcome.mu.Lock()
		s.outcome.lastFailed = batch
		s.outcome.mu.Unlock()
		s.applied = nil
		metrics.RestoreFailures.WithLabelValues(fam).Inc()
		if !r.full {
			metrics.PartialRestoreFailures.WithLabelValues(fam).Inc()
		}
		return fmt.Errorf("applying %s rules: %w", s.Config.Family, err)
	}
	s.outcome.mu.Lock()
	s.outcome.lastBatch = batch
	s.outcome.mu.Unlock()
	metrics.RestoreDuration.WithLabelValues(fam).Observe(time.Since(batch.Time).Seconds())
	r.res.Bytes += size
	r.res.Restores++
	return nil
}

// apply runs one restore of chunk (nothing when it is empty).
func (r *syncRun) apply(chunk []byte) error {
	if len(chunk) == 0 {
		return nil
	}
	batch := Batch{Family: r.s.Config.Family, Time: time.Now(), Full: r.full, Text: debugText(chunk)}
	hctx, cancel := r.s.hostCtx(r.ctx)
	err := r.s.Host.Restore(hctx, chunk)
	cancel()
	r.res.Phases.Restore += time.Since(batch.Time)
	if err == nil {
		countWritten(chunk, r.written)
	}
	return r.done(batch, err, len(chunk))
}

// applyFull reads the host's tables and writes all of rules over them, in
// chunks when it is over MaxRestoreRules, else streamed when the host can
// take a stream.
func (r *syncRun) applyFull(rules *Rules) (SyncResult, error) {
	s := r.s
	t0 := time.Now()
	h, err := s.hostState(r.ctx, rules)
	r.res.Phases.HostState = time.Since(t0)
	if err != nil {
		return SyncResult{}, err
	}
	sr, streams := s.Host.(iptables.StreamRestorer)
	switch {
	case s.MaxRestoreRules > 0 && ruleCount(rules) > s.MaxRestoreRules:
		return chunkedFullRestore(rules, h, s.MaxRestoreRules, r.apply)
	case streams:
		// One restore, written into iptables-restore as it is made: at
		// 10,000 Services its text (about 32 MB) is never held at once.
		batch := Batch{Family: s.Config.Family, Time: time.Now(), Full: true}
		var cw captureWriter
		var counts SyncResult
		var tables map[string]int
		hctx, cancel := s.hostCtx(r.ctx)
		rerr := sr.RestoreStream(hctx, func(w io.Writer) error {
			cw.w = w
			rw := iptables.NewRestoreWriter(&cw)
			counts, tables = writeFullRestore(rw, rules, h.stale, h.unjump, h.jump)
			return rw.Flush()
		})
		cancel()
		r.res.Phases.Restore += time.Since(batch.Time)
		batch.Text = cw.text()
		if rerr == nil {
			for t, n := range tables {
				r.written[t] += n
			}
		}
		return counts, r.done(batch, rerr, cw.n)
	default:
		t0 := time.Now()
		text, counts := fullRestore(rules, h.stale, h.unjump, h.jump)
		r.res.Phases.Diff = time.Since(t0)
		return counts, r.apply(text)
	}
}

// syncLocked applies rules, rendered from effective (the snapshot minus
// quarantined Service ports); snap is the whole snapshot, for conntrack.
func (s *Syncer) syncLocked(ctx context.Context, snap, effective *Snapshot, rules *Rules, render time.Duration) (SyncResult, error) {
	start := time.Now().Add(-render)
	r := &syncRun{s: s, ctx: ctx, full: s.applied == nil, written: map[string]int{}}
	r.res.Phases.Render = render
	var counts SyncResult
	var err error
	if r.full {
		counts, err = r.applyFull(rules)
	} else {
		t0 := time.Now()
		var text []byte
		text, counts = partialRestore(rules, s.applied)
		r.res.Phases.Diff = time.Since(t0)
		err = r.apply(text)
	}
	res := &r.res
	res.ChainsWritten, res.ChainsDeleted, res.Full = counts.ChainsWritten, counts.ChainsDeleted, r.full
	if err != nil {
		return *res, err
	}
	// A full restore inserted the missing jumps itself.
	if !r.full && !s.jumpsKnownGood(rules) {
		t0 := time.Now()
		hctx, cancel := s.hostCtx(ctx)
		err := s.Host.EnsureJumps(hctx, rules.Jumps)
		cancel()
		res.Phases.Jumps = time.Since(t0)
		if err != nil {
			s.applied = nil
			return *res, fmt.Errorf("ensuring %s jump rules: %w", s.Config.Family, err)
		}
	}
	s.applied, s.appliedSnap = rules, effective
	s.rules = rules
	t0 := time.Now()
	s.cleanConntrack(ctx, snap, r.full)
	res.Phases.Conntrack = time.Since(t0)
	if r.full {
		s.lastFull = time.Now()
	}
	res.Elapsed = time.Since(start)
	res.Quarantined = len(s.quarantine)
	recordSync(s.Config.Family, rules, *res, r.written)
	metrics.QuarantinedServices.Set(float64(len(s.quarantine)))
	klog.FromContext(ctx).V(2).Info("Synced rules", "family", s.Config.Family, "full", r.full,
		"chainsWritten", res.ChainsWritten, "chainsDeleted", res.ChainsDeleted, "bytes", res.Bytes, "elapsed", res.Elapsed,
		"render", res.Phases.Render, "hostState", res.Phases.HostState, "diff", res.Phases.Diff, "restore", res.Phases.Restore,
		"jumps", res.Phases.Jumps, "conntrack", res.Phases.Conntrack, "quarantined", res.Quarantined)
	return *res, nil
}
