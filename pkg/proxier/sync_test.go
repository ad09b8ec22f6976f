package proxier

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	v1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
	"github.com/switchyard-proxy/switchyard/pkg/metrics"
	"github.com/switchyard-proxy/switchyard/test/wait"
)

func spn(name, port string) ServicePortName {
	return ServicePortName{Namespace: "default", Name: name, Port: port, Protocol: v1.ProtocolTCP}
}

// addService puts a Service port with n ready endpoints into snap.
func addService(snap *Snapshot, name string, vip string, n int) ServicePortName {
	sp := spn(name, "http")
	snap.Services[sp] = &ServicePort{Name: sp, Port: 80, ClusterIPs: []netip.Addr{netip.MustParseAddr(vip)}}
	var eps []Endpoint
	base := netip.MustParseAddr(vip).As4()
	for i := 0; i < n; i++ {
		eps = append(eps, Endpoint{Addr: netip.AddrFrom4([4]byte{10, 244, base[3], byte(i + 1)}), Port: 8080, Ready: true, Serving: true})
	}
	if n > 0 {
		snap.Endpoints[sp] = eps
	}
	return sp
}

// declaredChains lists the chains a restore text declares, per table.
func declaredChains(text string) map[string][]string {
	out := map[string][]string{}
	table := ""
	for _, l := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(l, "*"):
			table = l[1:]
		case strings.HasPrefix(l, ":"):
			out[table] = append(out[table], strings.Fields(l[1:])[0])
		}
	}
	return out
}

// swyChains lists every SWY- chain in the fake's tables, per table.
func swyChains(f *iptables.Fake) map[string][]string {
	rs := f.Snapshot()
	out := map[string][]string{}
	for _, t := range []string{TableNAT, TableFilter} {
		names := rs.ChainNames(t, ChainPrefix)
		sort.Strings(names)
		out[t] = names
	}
	return out
}

func wantChains(r *Rules) map[string][]string {
	out := map[string][]string{}
	for _, t := range r.Tables {
		for _, c := range t.Chains {
			out[t.Name] = append(out[t.Name], c.Name)
		}
		sort.Strings(out[t.Name])
	}
	return out
}

func equalChains(a, b map[string][]string) bool {
	for _, t := range []string{TableNAT, TableFilter} {
		if strings.Join(a[t], ",") != strings.Join(b[t], ",") {
			return false
		}
	}
	return true
}

func TestPartialSyncWritesOnlyChangedChains(t *testing.T) {
	ctx := context.Background()
	fake := iptables.NewFake()
	s := NewSyncer(defaultConfig(), fake)
	snap := NewSnapshot()
	web := addService(snap, "web", "10.96.0.10", 2)
	addService(snap, "db", "10.96.0.20", 3)
	res, err := s.Sync(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Full {
		t.Error("first sync was not full")
	}

	// Scale web from 2 to 3 endpoints.
	snap2 := NewSnapshot()
	addService(snap2, "web", "10.96.0.10", 3)
	addService(snap2, "db", "10.96.0.20", 3)
	res, err = s.Sync(ctx, snap2)
	if err != nil {
		t.Fatal(err)
	}
	if res.Full {
		t.Error("second sync was full")
	}
	last := fake.Restores[len(fake.Restores)-1]
	got := declaredChains(last)
	newSEP := EndpointChainName(web, snap2.Endpoints[web][2])
	want := []string{ServiceChainName(web), newSEP}
	sort.Strings(got[TableNAT])
	sort.Strings(want)
	if strings.Join(got[TableNAT], ",") != strings.Join(want, ",") {
		t.Errorf("partial sync declared nat chains %v, want only %v\n%s", got[TableNAT], want, last)
	}
	if len(got[TableFilter]) != 0 {
		t.Errorf("partial sync touched the filter table: %v", got[TableFilter])
	}
	if !equalChains(swyChains(fake), wantChains(Render(snap2, defaultConfig()))) {
		t.Errorf("host chains %v, want %v", swyChains(fake), wantChains(Render(snap2, defaultConfig())))
	}

	// Nothing changed: nothing is written.
	n := len(fake.Restores)
	if _, err := s.Sync(ctx, snap2); err != nil {
		t.Fatal(err)
	}
	if len(fake.Restores) != n {
		t.Errorf("a sync with no change ran iptables-restore:\n%s", fake.Restores[len(fake.Restores)-1])
	}
}

func TestRemovedServiceChainsAreDeleted(t *testing.T) {
	ctx := context.Background()
	fake := iptables.NewFake()
	s := NewSyncer(defaultConfig(), fake)
	snap := NewSnapshot()
	web := addService(snap, "web", "10.96.0.10", 2)
	addService(snap, "db", "10.96.0.20", 1)
	if _, err := s.Sync(ctx, snap); err != nil {
		t.Fatal(err)
	}
	webChains := []string{ServiceChainName(web)}
	for _, ep := range snap.Endpoints[web] {
		webChains = append(webChains, EndpointChainName(web, ep))
	}

	snap2 := NewSnapshot()
	addService(snap2, "db", "10.96.0.20", 1)
	if _, err := s.Sync(ctx, snap2); err != nil {
		t.Fatal(err)
	}
	last := fake.Restores[len(fake.Restores)-1]
	for _, c := range webChains {
		if !strings.Contains(last, "-X "+c+"\n") {
			t.Errorf("removed chain %s not deleted:\n%s", c, last)
		}
	}
	if !equalChains(swyChains(fake), wantChains(Render(snap2, defaultConfig()))) {
		t.Errorf("chains leaked: host %v", swyChains(fake))
	}

	// Down to no endpoints: the Service chain goes, a REJECT appears.
	snap3 := NewSnapshot()
	db := addService(snap3, "db", "10.96.0.20", 0)
	if _, err := s.Sync(ctx, snap3); err != nil {
		t.Fatal(err)
	}
	if names := fake.Snapshot().ChainNames(TableNAT, ServiceChainName(db)); len(names) != 0 {
		t.Errorf("service chain of a Service without endpoints still exists")
	}
	if r := strings.Join(fake.Snapshot().RuleTexts(TableFilter, ChainServices), "\n"); !strings.Contains(r, "default/db:http has no endpoints") {
		t.Errorf("no REJECT for a Service without endpoints: %s", r)
	}
}

func TestFailedRestoreForcesFullSync(t *testing.T) {
	ctx := context.Background()
	fake, s, _ := syncedWeb(t)
	fake.FailRestore = errors.New("iptables-restore: line 3 failed")
	snap2 := NewSnapshot()
	addService(snap2, "web", "10.96.0.10", 3)
	if _, err := s.Sync(ctx, snap2); err == nil {
		t.Fatal("sync did not report the restore failure")
	}
	fake.FailRestore = nil
	res, err := s.Sync(ctx, snap2)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Full {
		t.Error("the sync after a failure was not full")
	}
	if !equalChains(swyChains(fake), wantChains(Render(snap2, defaultConfig()))) {
		t.Errorf("host chains %v after recovery", swyChains(fake))
	}
}

func TestStartupAdoptsRulesAndRemovesStaleChains(t *testing.T) {
	ctx := context.Background()
	fake := iptables.NewFake()
	// A previous run left web and old (gone now), plus jumps, plus a stale
	// chain some older version referenced from a built-in chain, and a
	// foreign kube-proxy chain that must stay.
	old := NewSnapshot()
	addService(old, "web", "10.96.0.10", 2)
	addService(old, "old", "10.96.0.30", 2)
	if _, err := NewSyncer(defaultConfig(), fake).Sync(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := fake.Rules.Restore("*nat\n:SWY-OLD-VERSION - [0:0]\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j SWY-OLD-VERSION\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n", true); err != nil {
		t.Fatal(err)
	}

	// A new process starts: its syncer knows nothing.
	snap := NewSnapshot()
	addService(snap, "web", "10.96.0.10", 2)
	s := NewSyncer(defaultConfig(), fake)
	res, err := s.Sync(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Full {
		t.Fatal("first sync after restart was not full")
	}
	last := fake.Restores[len(fake.Restores)-1]
	if strings.Contains(last, "\n-F") || strings.Contains(last, "-X "+ServiceChainName(spn("web", "http"))) {
		t.Errorf("restart flushed or deleted a live chain:\n%s", last)
	}
	want := wantChains(Render(snap, defaultConfig()))
	if !equalChains(swyChains(fake), want) {
		t.Errorf("after restart host chains %v, want %v", swyChains(fake), want)
	}
	rs := fake.Snapshot()
	if rs.Tables[TableNAT].Chains["KUBE-SERVICES"] == nil {
		t.Error("a foreign chain was deleted")
	}
	pre := strings.Join(rs.RuleTexts(TableNAT, "PREROUTING"), "\n")
	if !strings.Contains(pre, "-j KUBE-SERVICES") || strings.Contains(pre, "SWY-OLD-VERSION") {
		t.Errorf("PREROUTING after adoption:\n%s", pre)
	}
	if n := strings.Count(pre, "-j SWY-SERVICES"); n != 1 {
		t.Errorf("PREROUTING has %d jumps to SWY-SERVICES, want 1", n)
	}
}

func TestCheckDetectsFlushedRules(t *testing.T) {
	ctx := context.Background()
	fake, s, snap := syncedWeb(t)
	if ok, err := s.Check(ctx); !ok || err != nil {
		t.Fatalf("check after sync = %v, %v", ok, err)
	}
	// Someone runs iptables -t nat -F PREROUTING.
	if err := fake.Rules.Restore("*nat\n-F PREROUTING\nCOMMIT\n", true); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.Check(ctx); ok {
		t.Fatal("check did not notice the missing jump")
	}
	res, err := s.Sync(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Full {
		t.Error("sync after a failed check was not full")
	}
	if ok, _ := s.Check(ctx); !ok {
		t.Error("rules not restored")
	}
}

// busyHost is a host whose integrity checks meet another program holding
// the xtables lock.
type busyHost struct{ *iptables.Fake }

func (busyHost) Present(context.Context, map[string][]string, []iptables.Jump) (bool, error) {
	return false, fmt.Errorf("listing nat/PREROUTING: %w: exit status 4", iptables.ErrLockBusy)
}

// A check that could not look (the lock was busy) saw nothing broken: the
// next sync stays partial.
func TestBusyCheckDoesNotForceAFullSync(t *testing.T) {
	ctx := context.Background()
	host := busyHost{iptables.NewFake()}
	s := NewSyncer(defaultConfig(), host)
	snap := NewSnapshot()
	addService(snap, "web", "10.96.0.10", 2)
	if _, err := s.Sync(ctx, snap); err != nil {
		t.Fatal(err)
	}
	ok, err := s.Check(ctx)
	if ok || !errors.Is(err, iptables.ErrLockBusy) {
		t.Fatalf("check = %v, %v; want not ok and ErrLockBusy", ok, err)
	}
	next := NewSnapshot()
	addService(next, "web", "10.96.0.10", 3)
	res, err := s.Sync(ctx, next)
	if err != nil {
		t.Fatal(err)
	}
	if res.Full {
		t.Error("a busy check made the next sync full")
	}
}

// A restore that failed because another program held the lock refused
// nothing: no test restore bisects it (each would wait for the lock too)
// and nothing is quarantined.
func TestLockBusyRestoreIsNotBisected(t *testing.T) {
	ctx := context.Background()
	fake := iptables.NewFake()
	s := NewSyncer(defaultConfig(), fake)
	snap := NewSnapshot()
	addService(snap, "web", "10.96.0.10", 2)
	addService(snap, "db", "10.96.0.11", 1)
	fake.SetFailRestore(fmt.Errorf("iptables-legacy-restore: %w: exit status 4", iptables.ErrLockBusy))
	_, err := s.Sync(ctx, snap)
	if !errors.Is(err, iptables.ErrLockBusy) {
		t.Fatalf("sync error %v, want ErrLockBusy", err)
	}
	if fake.Tests != 0 {
		t.Errorf("%d test restores after a busy lock, want none", fake.Tests)
	}
	fake.SetFailRestore(nil)
	res, err := s.Sync(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	if res.Quarantined != 0 {
		t.Errorf("%d Service ports quarantined for a busy lock", res.Quarantined)
	}
}

type fixedSource struct {
	mu   sync.Mutex
	snap *Snapshot
}

func (f *fixedSource) TakeSnapshot() *Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.snap
}

func (f *fixedSource) set(s *Snapshot) {
	f.mu.Lock()
	f.snap = s
	f.mu.Unlock()
}

// gatedSource is a fixedSource whose TakeSnapshot, while gated, says it
// was entered and waits to be let through: the test then knows that the
// loop is in the middle of a sync.
type gatedSource struct {
	fixedSource
	gated            atomic.Bool
	entered, release chan struct{}
}

func (g *gatedSource) TakeSnapshot() *Snapshot {
	if g.gated.Load() {
		g.entered <- struct{}{}
		<-g.release
	}
	return g.fixedSource.TakeSnapshot()
}

// Requests made while a sync runs, however many, collapse into one sync
// after it.
func TestLoopSyncsOnRequestAndCollapsesBursts(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fake := iptables.NewFake()
	src := &gatedSource{fixedSource: fixedSource{snap: NewSnapshot()}, entered: make(chan struct{}), release: make(chan struct{})}
	p := New(LoopConfig{SyncPeriod: time.Hour}, src, NewSyncer(defaultConfig(), fake))
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	entered := func(what string) {
		t.Helper()
		select {
		case <-src.entered:
		case <-time.After(10 * time.Second):
			t.Fatalf("no sync started: %s", what)
		}
	}
	select {
	case <-p.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("no initial sync")
	}
	src.gated.Store(true)
	snap := NewSnapshot()
	addService(snap, "web", "10.96.0.10", 2)
	src.set(snap)
	p.RequestSync()
	entered("the requested sync")
	// The loop is inside a sync: a burst of requests now.
	for range 50 {
		p.RequestSync()
	}
	src.release <- struct{}{}
	entered("the sync after the burst")
	// Inside the one sync the burst asked for, nothing may be left pending.
	if n := len(p.loops[0].requests); n != 0 {
		t.Errorf("%d sync requests still pending behind the sync of a burst: the burst did not collapse", n)
	}
	src.gated.Store(false)
	src.release <- struct{}{}
	web := ServiceChainName(spn("web", "http"))
	wait.For(t, "the requested sync", 10*time.Second, func() bool {
		return len(fake.Snapshot().ChainNames(TableNAT, web)) == 1
	})
	cancel()
	<-done
}

// hungHost is a host whose restores hang until their context ends, while
// hang is set.
type hungHost struct {
	*iptables.Fake
	hang atomic.Bool
	hung atomic.Int32 // restores hanging now
}

func (h *hungHost) Restore(ctx context.Context, text []byte) error {
	if h.hang.Load() {
		h.hung.Add(1)
		defer h.hung.Add(-1)
		<-ctx.Done()
		return ctx.Err()
	}
	return h.Fake.Restore(ctx, text)
}

// hangingAfterASync is a syncer (with the given host timeout; zero: the
// default) that has synced web with two endpoints, on a host whose
// restores now hang, and the snapshot that scales web to three.
func hangingAfterASync(t *testing.T, timeout time.Duration) (*hungHost, *Syncer, *Snapshot) {
	t.Helper()
	host := &hungHost{Fake: iptables.NewFake()}
	s := NewSyncer(defaultConfig(), host)
	s.HostTimeout = timeout
	snap := NewSnapshot()
	addService(snap, "web", "10.96.0.10", 2)
	if _, err := s.Sync(context.Background(), snap); err != nil {
		t.Fatal(err)
	}
	host.hang.Store(true)
	next := NewSnapshot()
	addService(next, "web", "10.96.0.10", 3)
	return host, s, next
}

// What /healthz and /debug/rules read of a syncer answers at once while a
// sync is in progress (here hung in its restore), with the last finished
// sync's outcome.
func TestSyncOutcomeAnswersDuringASync(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	host, s, snap2 := hangingAfterASync(t, 0)
	done := make(chan struct{})
	go func() { _, _ = s.Sync(ctx, snap2); close(done) }()
	wait.For(t, "the restore to hang", 10*time.Second, func() bool { return host.hung.Load() > 0 })
	answered := make(chan bool, 1)
	go func() {
		last, failing := s.LastSynced()
		applied, _ := s.Batches()
		answered <- !last.IsZero() && !failing && applied.Text != ""
	}()
	select {
	case ok := <-answered:
		if !ok {
			t.Error("during a sync, the last sync's outcome is not the finished one's")
		}
	case <-time.After(10 * time.Second):
		t.Error("LastSynced and Batches waited for the sync in progress")
	}
	cancel()
	<-done
}

func TestHungRestoreIsAbandonedAndRetried(t *testing.T) {
	ctx := context.Background()
	host, s, snap2 := hangingAfterASync(t, 50*time.Millisecond)
	done := make(chan error, 1)
	go func() { _, err := s.Sync(ctx, snap2); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a hung restore was reported as success")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the sync waited on a hung restore")
	}
	host.hang.Store(false)
	res, err := s.Sync(ctx, snap2)
	if err != nil || !res.Full {
		t.Fatalf("retry after a hung restore: full=%v err=%v", res.Full, err)
	}
	if !equalChains(swyChains(host.Fake), wantChains(Render(snap2, defaultConfig()))) {
		t.Error("rules not converged after the retry")
	}
}

// slowCheckHost is a host whose integrity checks block until released, as
// a check on legacy at 10,000 Services takes seconds.
type slowCheckHost struct {
	*iptables.Fake
	checking chan struct{}
	release  chan struct{}
}

func (h *slowCheckHost) Present(ctx context.Context, chains map[string][]string, jumps []iptables.Jump) (bool, error) {
	select {
	case h.checking <- struct{}{}:
	default:
	}
	select {
	case <-h.release:
	case <-ctx.Done():
	}
	return h.Fake.Present(ctx, chains, jumps)
}

// The integrity check runs beside the sync loop: a change made while a
// check is under way is programmed without waiting for it.
func TestChangesDoNotWaitForTheIntegrityCheck(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	host := &slowCheckHost{Fake: iptables.NewFake(), checking: make(chan struct{}, 1), release: make(chan struct{})}
	src := &fixedSource{snap: NewSnapshot()}
	p := New(LoopConfig{MinSyncPeriod: 10 * time.Millisecond, SyncPeriod: 50 * time.Millisecond}, src, NewSyncer(defaultConfig(), host))
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	select {
	case <-host.checking:
	case <-time.After(10 * time.Second):
		t.Fatal("no integrity check started")
	}
	snap := NewSnapshot()
	addService(snap, "web", "10.96.0.10", 2)
	src.set(snap)
	p.RequestSync()
	web := ServiceChainName(spn("web", "http"))
	wait.For(t, "a change programmed while the check is blocked", 10*time.Second, func() bool {
		return len(host.Snapshot().ChainNames(TableNAT, web)) == 1
	})
	close(host.release)
}

func TestServiceWithTenThousandEndpointsIsProgrammed(t *testing.T) {
	snap := NewSnapshot()
	n := addService(snap, "huge", "10.96.0.10", 0)
	for i := 0; i < 10000; i++ {
		snap.Endpoints[n] = append(snap.Endpoints[n], Endpoint{Addr: netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}), Port: 8080, Ready: true, Serving: true})
	}
	fake := iptables.NewFake()
	if _, err := NewSyncer(defaultConfig(), fake).Sync(context.Background(), snap); err != nil {
		t.Fatal(err)
	}
	rules := fake.Snapshot().RuleTexts(TableNAT, ServiceChainName(n))
	// One masquerade rule plus one rule per endpoint, the last without a
	// probability.
	if len(rules) != 10001 {
		t.Fatalf("service chain has %d rules, want 10001", len(rules))
	}
	if !strings.Contains(rules[1], "--probability 0.0001000000") || strings.Contains(rules[10000], "--probability") {
		t.Errorf("probabilities: first %q, last %q", rules[1], rules[10000])
	}
}

// Services changing faster than the minimum sync period: every burst
// collapses, nothing is lost, and the rules end up exactly at the last state.
func TestChurnFasterThanTheSyncPeriod(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fake := iptables.NewFake()
	src := &fixedSource{snap: NewSnapshot()}
	p := New(LoopConfig{MinSyncPeriod: 50 * time.Millisecond, SyncPeriod: time.Hour}, src, NewSyncer(defaultConfig(), fake))
	go p.Run(ctx)
	<-p.Synced()
	var last *Snapshot
	for i := 0; i < 300; i++ { // 300 changes with no pause between them
		snap := NewSnapshot()
		for j := 0; j <= i%7; j++ {
			addService(snap, fmt.Sprintf("svc-%d", j), fmt.Sprintf("10.96.0.%d", j+1), 1+(i+j)%4)
		}
		src.set(snap)
		p.RequestSync()
		last = snap
	}
	want := wantChains(Render(last, defaultConfig()))
	wait.For(t, "the last state", 10*time.Second, func() bool { return equalChains(swyChains(fake), want) })
	syncs, err := p.status()
	if err != nil {
		t.Fatal(err)
	}
	if syncs >= 300 {
		t.Errorf("%d syncs for 300 changes: bursts did not collapse", syncs)
	}
	got := fake.Snapshot()
	for _, c := range Render(last, defaultConfig()).Table(TableNAT).Chains {
		if strings.Join(got.RuleTexts(TableNAT, c.Name), "\n") != strings.Join(c.Rules, "\n") {
			t.Errorf("chain %s differs from the last state", c.Name)
		}
	}
}

// Each sync says where its time went, per phase, in its result and in
// switchyard_sync_phase_duration_seconds.
func TestSyncRecordsItsPhases(t *testing.T) {
	ctx := context.Background()
	fake := iptables.NewFake()
	s := NewSyncer(defaultConfig(), fake)
	snap := NewSnapshot()
	addService(snap, "web", "10.96.0.10", 2)
	full, err := s.Sync(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	if full.Phases.Render <= 0 || full.Phases.Restore <= 0 {
		t.Errorf("full sync phases: %+v", full.Phases)
	}
	snap2 := NewSnapshot()
	addService(snap2, "web", "10.96.0.10", 3)
	part, err := s.Sync(ctx, snap2)
	if err != nil {
		t.Fatal(err)
	}
	p := part.Phases
	if p.Render <= 0 || p.Diff <= 0 || p.Restore <= 0 || p.HostState != 0 {
		t.Errorf("partial sync phases: %+v", p)
	}
	if sum := p.Render + p.Diff + p.Restore + p.Jumps + p.Conntrack; sum > part.Elapsed {
		t.Errorf("phases (%v) add up to more than the sync (%v)", sum, part.Elapsed)
	}
	p.observe("IPv4")
	if testutil.CollectAndCount(metrics.SyncPhaseDuration) < 7 {
		t.Error("the phases are not published")
	}
}

// Each IP family has its own sync loop: while IPv6's restores hang, IPv4's
// changes are still programmed, and the network programming trigger times
// reach both families.
func TestFamiliesSyncIndependently(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	v4 := iptables.NewFake()
	v6 := &hungHost{Fake: iptables.NewFake()}
	src := &fixedSource{snap: NewSnapshot()}
	s6 := NewSyncer(v6Config(), v6)
	s6.HostTimeout = time.Hour // a restore that hangs for good
	p := New(LoopConfig{MinSyncPeriod: 10 * time.Millisecond, SyncPeriod: time.Hour}, src, NewSyncer(defaultConfig(), v4), s6)
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	select {
	case <-p.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("no initial sync")
	}
	v6.hang.Store(true)
	// web is dual-stack, so both families have something to restore.
	dual := func(snap *Snapshot) {
		n := addService(snap, "web", "10.96.0.10", 2)
		sp := snap.Services[n]
		sp.ClusterIPs = append(sp.ClusterIPs, netip.MustParseAddr("fd00:96::10"))
		snap.Endpoints[n] = append(snap.Endpoints[n], Endpoint{Addr: netip.MustParseAddr("fd00:10:244::1"), Port: 8080, Ready: true, Serving: true})
	}
	snap := NewSnapshot()
	dual(snap)
	src.set(snap)
	p.RequestSync()
	web := ServiceChainName(spn("web", "http"))
	wait.For(t, "IPv4's first sync after the change", 10*time.Second, func() bool {
		return len(v4.Snapshot().ChainNames(TableNAT, web)) == 1
	})
	// IPv6 is now stuck in its restore (one loop for both would be too):
	// the next change still reaches IPv4.
	wait.For(t, "IPv6's restore to hang", 10*time.Second, func() bool { return v6.hung.Load() > 0 })
	snap2 := NewSnapshot()
	dual(snap2)
	addService(snap2, "db", "10.96.0.20", 1)
	src.set(snap2)
	p.RequestSync()
	db := ServiceChainName(spn("db", "http"))
	wait.For(t, "IPv4's next sync while IPv6's restore hangs", 10*time.Second, func() bool {
		return len(v4.Snapshot().ChainNames(TableNAT, db)) == 1
	})
	cancel()
	<-done
}

// syncedWeb is a syncer on a fake host after its first sync of one Service,
// web (10.96.0.10, two endpoints).
func syncedWeb(t *testing.T) (*iptables.Fake, *Syncer, *Snapshot) {
	t.Helper()
	fake := iptables.NewFake()
	s := NewSyncer(defaultConfig(), fake)
	snap := NewSnapshot()
	addService(snap, "web", "10.96.0.10", 2)
	if _, err := s.Sync(context.Background(), snap); err != nil {
		t.Fatal(err)
	}
	return fake, s, snap
}
