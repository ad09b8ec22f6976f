package proxier

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/switchyard-proxy/switchyard/pkg/conntrack"
	"github.com/switchyard-proxy/switchyard/pkg/iptables"
	"github.com/switchyard-proxy/switchyard/pkg/metrics"
)

// SyncResult describes one sync, for logs and metrics.
type SyncResult struct {
	Full          bool
	Quarantined   int
	ChainsWritten int
	ChainsDeleted int
	// Pending is how many changed Service ports this sync left for the
	// next one, to keep its restore within MaxRestoreRules.
	Pending int
	// Restores is how many iptables-restore runs the sync took.
	Restores int
	Bytes    int
	Elapsed  time.Duration
	// Phases is where Elapsed went.
	Phases Phases
}

// Phases is the time one family's sync spent in each step: rendering,
// reading the host's tables (full syncs), writing the restore text (the
// diff; for a streamed full restore it is part of Restore), the
// iptables-restore runs, ensuring the jump rules, and the conntrack
// clean-up. Queue is how long the oldest change waited for the sync to
// start (set by the sync loop).
type Phases struct {
	Queue, Render, HostState, Diff, Restore, Jumps, Conntrack time.Duration
}

// observe publishes the phases' durations.
func (p Phases) observe(family string) {
	for _, ph := range []struct {
		name string
		d    time.Duration
	}{{"queue", p.Queue}, {"render", p.Render}, {"host_state", p.HostState}, {"diff", p.Diff},
		{"restore", p.Restore}, {"jumps", p.Jumps}, {"conntrack", p.Conntrack}} {
		metrics.SyncPhaseDuration.WithLabelValues(family, ph.name).Observe(ph.d.Seconds())
	}
}

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
	lastFull    time.Time
	// lastOK is when a sync last succeeded; failing, whether the latest
	// failed (the per-family part of the health answer).
	lastOK  time.Time
	failing bool
	rules   *Rules
	// lastUDP are the UDP frontends of the last successful sync; udpRetry
	// is set while a failed clean-up is to be retried.
	lastUDP  udpFrontends
	udpRetry bool
	// For /debug/rules: the last batch applied and the last one refused.
	lastBatch, lastFailed Batch
	// quarantine holds the Service ports whose rules the kernel refused.
	quarantine map[ServicePortName]quarantined
}

// Batch is one iptables-restore input and what became of it.
type Batch struct {
	Family v1.IPFamily `json:"family"`
	Time   time.Time   `json:"time"`
	Full   bool        `json:"full"`
	Text   string      `json:"text"`
	Error  string      `json:"error,omitempty"`
}

// Batches returns the last applied and the last failed batch (zero values
// when there was none).
func (s *Syncer) Batches() (applied, failed Batch) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastBatch, s.lastFailed
}

// DefaultHostTimeout is how long one host call may take. A full restore of
// 10,000 Services can take tens of seconds on nf_tables.
const DefaultHostTimeout = 5 * time.Minute

func (s *Syncer) hostCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	d := s.HostTimeout
	if d <= 0 {
		d = DefaultHostTimeout
	}
	return context.WithTimeout(ctx, d)
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

// Sync renders the snapshot and applies the difference. Any failure makes the
// next sync full. When the kernel refuses the batch and the refusal can be
// pinned on single Service ports (by bisecting with test restores), those
// are quarantined and everything else is programmed in this same sync.
func (s *Syncer) Sync(ctx context.Context, snap *Snapshot) (SyncResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	res, err := s.syncHeld(ctx, snap)
	s.failing = err != nil
	if err == nil {
		s.lastOK = time.Now()
	}
	return res, err
}

// LastSynced is when a sync last succeeded (zero before the first), and
// whether the latest one failed.
func (s *Syncer) LastSynced() (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastOK, s.failing
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
	if s.applied != nil {
		target, pending := boundedTarget(s.appliedSnap, effective, s.MaxRestoreRules)
		if pending > 0 {
			// Clean conntrack for what is programmed, not yet for the rest.
			res, err := s.syncLocked(ctx, target, target)
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
	res, err := s.syncLocked(ctx, snap, effective)
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
	return s.syncLocked(ctx, snap, s.releaseAndFilterQuarantine(snap))
}

// syncLocked renders effective (the snapshot minus quarantined Service
// ports) and applies it; snap is the whole snapshot, for conntrack.
func (s *Syncer) syncLocked(ctx context.Context, snap, effective *Snapshot) (SyncResult, error) {
	start := time.Now()
	rules := s.renderer.Render(effective, s.Config)
	full := s.applied == nil
	var res SyncResult
	res.Phases.Render = time.Since(start)
	fam := string(s.Config.Family)
	written := map[string]int{} // rules written per table, for metrics
	// apply runs one restore; chunks are applied as they are made, so a
	// full sync never holds all of its text at once.
	// done records one restore's outcome.
	done := func(batch Batch, err error, size int) error {
		if err != nil {
			batch.Error = err.Error()
			s.lastFailed = batch
			s.applied = nil
			metrics.RestoreFailures.WithLabelValues(fam).Inc()
			if !full {
				metrics.PartialRestoreFailures.WithLabelValues(fam).Inc()
			}
			return fmt.Errorf("applying %s rules: %w", s.Config.Family, err)
		}
		s.lastBatch = batch
		metrics.RestoreDuration.WithLabelValues(fam).Observe(time.Since(batch.Time).Seconds())
		res.Bytes += size
		res.Restores++
		return nil
	}
	apply := func(chunk []byte) error {
		if len(chunk) == 0 {
			return nil
		}
		batch := Batch{Family: s.Config.Family, Time: time.Now(), Full: full, Text: debugText(chunk)}
		hctx, cancel := s.hostCtx(ctx)
		err := s.Host.Restore(hctx, chunk)
		cancel()
		res.Phases.Restore += time.Since(batch.Time)
		if err == nil {
			countWritten(chunk, written)
		}
		return done(batch, err, len(chunk))
	}
	var err error
	var counts SyncResult
	if full {
		t0 := time.Now()
		h, herr := s.hostState(ctx, rules)
		res.Phases.HostState = time.Since(t0)
		if herr != nil {
			return res, herr
		}
		sr, streams := s.Host.(iptables.StreamRestorer)
		switch {
		case s.MaxRestoreRules > 0 && ruleCount(rules) > s.MaxRestoreRules:
			counts, err = chunkedFullRestore(rules, h, s.MaxRestoreRules, apply)
		case streams:
			// One restore, written into iptables-restore as it is made: at
			// 10,000 Services its text (about 32 MB) is never held at once.
			batch := Batch{Family: s.Config.Family, Time: time.Now(), Full: full}
			var cw captureWriter
			var tables map[string]int
			hctx, cancel := s.hostCtx(ctx)
			rerr := sr.RestoreStream(hctx, func(w io.Writer) error {
				cw.w = w
				rw := iptables.NewRestoreWriter(&cw)
				counts, tables = writeFullRestore(rw, rules, h.stale, h.unjump, h.jump)
				return rw.Flush()
			})
			cancel()
			res.Phases.Restore += time.Since(batch.Time)
			batch.Text = cw.text()
			if rerr == nil {
				for t, n := range tables {
					written[t] += n
				}
			}
			err = done(batch, rerr, cw.n)
		default:
			t0 := time.Now()
			var text []byte
			text, counts = fullRestore(rules, h.stale, h.unjump, h.jump)
			res.Phases.Diff = time.Since(t0)
			err = apply(text)
		}
	} else {
		t0 := time.Now()
		var text []byte
		text, counts = partialRestore(rules, s.applied)
		res.Phases.Diff = time.Since(t0)
		err = apply(text)
	}
	res.ChainsWritten, res.ChainsDeleted, res.Full = counts.ChainsWritten, counts.ChainsDeleted, full
	if err != nil {
		return res, err
	}
	// A full restore inserted the missing jumps itself.
	if !full && !s.jumpsKnownGood(rules) {
		t0 := time.Now()
		hctx, cancel := s.hostCtx(ctx)
		err := s.Host.EnsureJumps(hctx, rules.Jumps)
		cancel()
		res.Phases.Jumps = time.Since(t0)
		if err != nil {
			s.applied = nil
			return res, fmt.Errorf("ensuring %s jump rules: %w", s.Config.Family, err)
		}
	}
	s.applied, s.appliedSnap = rules, effective
	s.rules = rules
	t0 := time.Now()
	s.cleanConntrack(ctx, snap, full)
	res.Phases.Conntrack = time.Since(t0)
	if full {
		s.lastFull = time.Now()
	}
	res.Elapsed = time.Since(start)
	res.Quarantined = len(s.quarantine)
	recordSync(s.Config.Family, rules, res, written)
	metrics.QuarantinedServices.Set(float64(len(s.quarantine)))
	klog.FromContext(ctx).V(2).Info("Synced rules", "family", s.Config.Family, "full", full,
		"chainsWritten", res.ChainsWritten, "chainsDeleted", res.ChainsDeleted, "bytes", res.Bytes, "elapsed", res.Elapsed,
		"render", res.Phases.Render, "hostState", res.Phases.HostState, "diff", res.Phases.Diff, "restore", res.Phases.Restore,
		"jumps", res.Phases.Jumps, "conntrack", res.Phases.Conntrack, "quarantined", res.Quarantined)
	return res, nil
}

// cleanConntrack deletes stale UDP flows, now that the rules send new
// packets to the right place. Listing the conntrack table costs in
// proportion to the whole table (a busy node holds hundreds of thousands of
// TCP entries), so a partial sync lists it only when a flow can have become
// stale since the last clean-up: a UDP frontend or one of its endpoints
// went, or a frontend is new or got its first endpoints (flows sent before
// its rules were programmed are untranslated); a full sync always does.
// Failures are logged: the next sync retries.
func (s *Syncer) cleanConntrack(ctx context.Context, snap *Snapshot, full bool) {
	if s.Conntrack == nil {
		return
	}
	cur := udpFrontendsOf(snap, s.Config.Family)
	check := cur.withGone(s.lastUDP)
	if check.empty() || (!full && !s.udpRetry && !cur.mayHaveStale(s.lastUDP)) {
		s.lastUDP = cur
		return
	}
	start := time.Now()
	n, err := s.Conntrack.DeleteUDP(s.Config.Family == v1.IPv6Protocol, check.stale)
	fam := string(s.Config.Family)
	metrics.ConntrackReconcileDuration.WithLabelValues(fam).Observe(time.Since(start).Seconds())
	metrics.ConntrackDeleted.WithLabelValues(fam).Add(float64(n))
	metrics.ConntrackEntriesDeleted.WithLabelValues(fam).Add(float64(n))
	logger := klog.FromContext(ctx)
	if err != nil {
		// Keep the gone frontends so the next sync looks for them again.
		s.lastUDP, s.udpRetry = check, true
		logger.Error(err, "Deleting stale UDP conntrack entries failed; will retry on the next sync", "family", s.Config.Family, "deleted", n)
		return
	}
	s.lastUDP, s.udpRetry = cur, false
	if n > 0 {
		logger.V(2).Info("Deleted stale UDP conntrack entries", "family", s.Config.Family, "deleted", n, "elapsed", time.Since(start))
	}
}

// jumpsKnownGood is true when the jumps were ensured by an earlier sync and
// have not changed since; the periodic check catches anyone removing them.
func (s *Syncer) jumpsKnownGood(rules *Rules) bool {
	return s.rules != nil && slices.EqualFunc(s.rules.Jumps, rules.Jumps, func(a, b iptables.Jump) bool {
		return a.Table == b.Table && a.Chain == b.Chain && a.Target == b.Target && a.Comment == b.Comment && slices.Equal(a.Extra, b.Extra)
	})
}

// Check reports whether the rules of the last sync are still on the host:
// the canary chains exist and the jumps are in place. When they are not,
// the next sync is made full.
func (s *Syncer) Check(ctx context.Context) (bool, error) {
	s.mu.Lock()
	rules, lastFull := s.rules, s.lastFull
	s.mu.Unlock()
	if rules == nil {
		return false, nil
	}
	// The canaries and the jumps are enough: a flushed or rewritten table
	// loses its canary, and a top-level chain cannot go while something
	// jumps to it. On legacy every iptables call loads the whole table
	// (about half a second at 10,000 Services), so the check asks for one
	// chain per table and lists each built-in chain once: 8 calls.
	ok, err := s.Host.Present(ctx, canaries(), rules.Jumps)
	if errors.Is(err, iptables.ErrLockBusy) {
		// Another program held the lock longer than we wait: nothing was
		// seen, so nothing is repaired. The next check looks again.
		return false, err
	}
	if err != nil || !ok {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.lastFull.Equal(lastFull) {
			// The check ran beside a full sync, which wrote everything
			// afresh: what it saw missing may have been mid-repair. The
			// next check looks again.
			return true, nil
		}
		s.applied = nil
	}
	return ok, err
}

// canaries are the chains Check looks for, per table.
func canaries() map[string][]string {
	return map[string][]string{TableNAT: {ChainCanary}, TableFilter: {ChainCanary}}
}

// hostState reads the host's tables: every chain, the rules in each, the
// SWY- chains that exist but are not wanted, and the rules in other chains
// that jump to them (they must go before the chains can be deleted).
func (s *Syncer) hostState(ctx context.Context, rules *Rules) (hostTables, error) {
	h := hostTables{existing: map[string]map[string]bool{}, size: map[string]map[string]int{},
		stale: map[string][]string{}, unjump: map[string][]string{}, jump: map[string][]string{}}
	for _, t := range rules.Tables {
		hctx, cancel := s.hostCtx(ctx)
		out, err := s.Host.Save(hctx, t.Name)
		cancel()
		if err != nil {
			return h, fmt.Errorf("reading %s table: %w", t.Name, err)
		}
		want := map[string]bool{}
		for _, c := range t.Chains {
			want[c.Name] = true
		}
		existing, jumps := iptables.ScanSave(out)
		h.existing[t.Name], h.size[t.Name] = map[string]bool{}, map[string]int{}
		for _, c := range existing {
			h.existing[t.Name][c] = true
			if strings.HasPrefix(c, ChainPrefix) && !want[c] {
				h.stale[t.Name] = append(h.stale[t.Name], c)
			}
		}
		for _, j := range jumps {
			h.size[t.Name][j.Chain]++
			if !strings.HasPrefix(j.Chain, ChainPrefix) && strings.HasPrefix(j.Target, ChainPrefix) && !want[j.Target] {
				h.unjump[t.Name] = append(h.unjump[t.Name], "-D "+j.Chain+" "+j.Rule)
			}
		}
		// Missing jumps, inserted last-first at the top of their chain so
		// they end up in the given order.
		for i := len(rules.Jumps) - 1; i >= 0; i-- {
			j := rules.Jumps[i]
			if j.Table == t.Name && !iptables.HasSavedJump(jumps, j) {
				h.jump[t.Name] = append(h.jump[t.Name], "-I "+j.Chain+" 1 "+iptables.ArgsText(j.Args()))
			}
		}
	}
	return h, nil
}

// fullRestore writes every chain of ours and deletes stale ones.
func fullRestore(r *Rules, stale, unjump, jump map[string][]string) ([]byte, SyncResult) {
	var b bytes.Buffer
	res, _ := writeFullRestore(iptables.NewRestoreWriter(&b), r, stale, unjump, jump)
	return b.Bytes(), res
}

// writeFullRestore writes the text of fullRestore to w, and returns the
// rules it writes per table. Write errors are w's to report.
func writeFullRestore(w *iptables.RestoreWriter, r *Rules, stale, unjump, jump map[string][]string) (SyncResult, map[string]int) {
	var res SyncResult
	written := map[string]int{}
	for _, t := range r.Tables {
		w.Table(t.Name)
		for _, c := range t.Chains {
			w.DeclareChain(c.Name)
		}
		for _, c := range stale[t.Name] {
			w.DeclareChain(c)
		}
		for _, line := range unjump[t.Name] {
			w.Line(line)
		}
		for _, c := range t.Chains {
			w.Rules(c.Name, c.Rules)
			written[t.Name] += len(c.Rules)
		}
		for _, line := range jump[t.Name] {
			w.Line(line)
		}
		for _, c := range stale[t.Name] {
			w.DeleteChain(c)
		}
		w.Commit()
		res.ChainsWritten += len(t.Chains)
		res.ChainsDeleted += len(stale[t.Name])
	}
	return res, written
}

// captureWriter passes writes on, counting the bytes and keeping the first
// maxDebugText of them for /debug/rules.
type captureWriter struct {
	w    io.Writer
	n    int
	head bytes.Buffer
}

func (c *captureWriter) Write(p []byte) (int, error) {
	if room := maxDebugText - c.head.Len(); room > 0 {
		c.head.Write(p[:min(room, len(p))])
	}
	n, err := c.w.Write(p)
	c.n += n
	return n, err
}

func (c *captureWriter) text() string { return keptText(c.head.Bytes(), c.n) }

// partialRestore writes only chains whose content differs from what was
// applied, and deletes chains no longer wanted. A table with nothing to do
// is left out; with nothing to do at all the text is empty. Service ports
// whose rendered output is the very same as last time are not looked at,
// so the work is proportional to what changed (plus the dispatch chains).
func partialRestore(r, last *Rules) ([]byte, SyncResult) {
	var b bytes.Buffer
	w := iptables.NewRestoreWriter(&b)
	var res SyncResult
	for _, t := range r.Tables {
		changed, gone := diffTable(r, last, t)
		if len(changed) == 0 && len(gone) == 0 {
			continue
		}
		sort.Slice(changed, func(i, j int) bool { return changed[i].Name < changed[j].Name })
		sort.Strings(gone)
		w.Table(t.Name)
		for _, c := range changed {
			w.DeclareChain(c.Name)
		}
		// Flush removed chains first: one may still jump to another.
		for _, name := range gone {
			w.DeclareChain(name)
		}
		for _, c := range changed {
			w.Rules(c.Name, c.Rules)
		}
		for _, name := range gone {
			w.DeleteChain(name)
		}
		w.Commit()
		res.ChainsWritten += len(changed)
		res.ChainsDeleted += len(gone)
	}
	return b.Bytes(), res
}

// diffTable returns the chains of one table that are new or differ from
// last, and the names of the chains last had that r has not.
func diffTable(r, last *Rules, t Table) (changed []Chain, gone []string) {
	if r.ports == nil || last.ports == nil {
		// Rules not from a Renderer: compare every chain.
		var prev []Chain
		if lt := last.Table(t.Name); lt != nil {
			prev = lt.Chains
		}
		return diffChains(prev, t.Chains)
	}
	c, g := diffChainMaps(last.shared[t.Name], r.shared[t.Name])
	changed, gone = append(changed, c...), append(gone, g...)
	own := func(pr *portRender) []Chain {
		if pr == nil {
			return nil
		}
		if t.Name == TableNAT {
			return pr.nat
		}
		return pr.filter
	}
	// Both name lists are sorted: walk them together.
	sameNames := sameSlice(r.names, last.names)
	i, j := 0, 0
	for i < len(r.names) || j < len(last.names) {
		var pr, old *portRender
		switch {
		case sameNames || i < len(r.names) && j < len(last.names) && r.names[i] == last.names[j]:
			pr, old = r.ports[i], last.ports[j]
			i++
			j++
		case j == len(last.names) || i < len(r.names) && lessName(r.names[i], last.names[j]):
			pr = r.ports[i] // new
			i++
		default:
			old = last.ports[j] // gone
			j++
		}
		if old != pr {
			c, g := diffChains(own(old), own(pr))
			changed, gone = append(changed, c...), append(gone, g...)
		}
	}
	return changed, gone
}

func diffChains(prev, next []Chain) (changed []Chain, gone []string) {
	pm := make(map[string][]string, len(prev))
	for _, c := range prev {
		pm[c.Name] = c.Rules
	}
	nm := make(map[string][]string, len(next))
	for _, c := range next {
		nm[c.Name] = c.Rules
	}
	return diffChainMaps(pm, nm)
}

func diffChainMaps(prev, next map[string][]string) (changed []Chain, gone []string) {
	for name, rules := range next {
		old, ok := prev[name]
		if !ok || !sameSlice(old, rules) && !slices.Equal(old, rules) {
			changed = append(changed, Chain{Name: name, Rules: rules})
		}
	}
	for name := range prev {
		if _, ok := next[name]; !ok {
			gone = append(gone, name)
		}
	}
	return changed, gone
}

// recordSync publishes one successful sync's figures.
func recordSync(family v1.IPFamily, rules *Rules, res SyncResult, written map[string]int) {
	fam := string(family)
	secs := res.Elapsed.Seconds()
	metrics.SyncDuration.WithLabelValues(fam).Observe(secs)
	kind := "noop"
	switch {
	case res.Full:
		kind = "full"
		metrics.SyncFullDuration.WithLabelValues(fam).Observe(secs)
	default:
		metrics.SyncPartialDuration.WithLabelValues(fam).Observe(secs)
		if res.Bytes > 0 {
			kind = "partial"
		}
	}
	metrics.Syncs.WithLabelValues(kind, fam).Inc()
	metrics.SyncLastTimestamp.WithLabelValues(fam).SetToCurrentTime()
	if res.Bytes > 0 {
		metrics.RestoreBytes.WithLabelValues(fam).Observe(float64(res.Bytes))
	}
	metrics.ChainsWritten.WithLabelValues(fam).Add(float64(res.ChainsWritten))
	metrics.ChainsDeleted.WithLabelValues(fam).Add(float64(res.ChainsDeleted))

	counts := rules.counts
	if rules.ports == nil { // not from a Renderer: count here
		counts = ruleCounts{}
		for _, t := range rules.Tables {
			counts.addChains(t.Name, t.Chains)
		}
	}
	for _, t := range rules.Tables {
		total := 0
		for l, level := range ruleLevels {
			n := counts[tableIndex(t.Name)][l]
			total += n
			metrics.RulesByLevel.WithLabelValues(t.Name, level, fam).Set(float64(n))
		}
		metrics.RulesTotal.WithLabelValues(t.Name, fam).Set(float64(total))
		metrics.RulesLast.WithLabelValues(t.Name, fam).Set(float64(written[t.Name]))
	}
	metrics.NoLocalEndpoints.WithLabelValues("internal", fam).Set(float64(rules.Stats.NoLocalInternal))
	metrics.NoLocalEndpoints.WithLabelValues("external", fam).Set(float64(rules.Stats.NoLocalExternal))
}

// countWritten adds the rules restore text writes, per table.
func countWritten(text []byte, written map[string]int) {
	table := ""
	for len(text) > 0 {
		line := text
		if i := bytes.IndexByte(text, '\n'); i >= 0 {
			line, text = text[:i], text[i+1:]
		} else {
			text = nil
		}
		switch {
		case len(line) > 0 && line[0] == '*':
			table = string(line[1:])
		case bytes.HasPrefix(line, []byte("-A ")):
			written[table]++
		}
	}
}

// maxDebugText is the most of a batch /debug/rules keeps: a full sync at
// 10,000 Services writes about 14 MB, which is not worth holding.
const maxDebugText = 256 << 10

func debugText(b []byte) string { return keptText(b[:min(len(b), maxDebugText)], len(b)) }

// keptText is the kept head of a batch of total bytes, saying how much was
// not kept.
func keptText(head []byte, total int) string {
	if total <= len(head) {
		return string(head)
	}
	return string(head) + fmt.Sprintf("\n... (%d more bytes not kept)\n", total-len(head))
}

func chainLevel(name string) string {
	switch {
	case strings.HasPrefix(name, sepChainPrefix):
		return "endpoint"
	case strings.HasPrefix(name, svcChainPrefix), strings.HasPrefix(name, svlChainPrefix),
		strings.HasPrefix(name, extChainPrefix), strings.HasPrefix(name, fwChainPrefix):
		return "service"
	}
	return "top"
}
