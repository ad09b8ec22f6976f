package proxier

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
)

// boundSnapshot is n Services with three endpoints each; version picks
// the endpoints' port, so a new version changes every Service.
func boundSnapshot(names []string, version int) *Snapshot {
	snap := NewSnapshot()
	for _, s := range names {
		var i int
		if _, err := fmt.Sscanf(s, "svc-%d", &i); err != nil {
			panic(err)
		}
		name := ServicePortName{Namespace: "b", Name: s, Port: "http", Protocol: v1.ProtocolTCP}
		snap.Services[name] = &ServicePort{Name: name, Port: 80, ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})}}
		for e := range 3 {
			snap.Endpoints[name] = append(snap.Endpoints[name], Endpoint{
				Addr: netip.AddrFrom4([4]byte{10, 244, byte(e), byte(i)}), Port: int32(8000 + version), Ready: true, Serving: true})
		}
	}
	return snap
}

func svcNames(from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("svc-%03d", i))
	}
	return out
}

// reached is where a connection from a pod to the Service's ClusterIP may go.
func reached(rs *iptables.Ruleset, i int) string {
	tr := traceIn(rs, flow{src: netip.MustParseAddr("10.244.9.9"), dst: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), 80).String()})
	eps := tr.Endpoints()
	if len(eps) == 0 {
		for _, o := range tr.Outcomes {
			if o.Verdict != "ACCEPT" {
				return o.Verdict
			}
		}
		return "nothing"
	}
	return strings.Join(eps, ",")
}

// A change bigger than the bound is applied in several restores, none over
// the bound (plus one Service port), updates before additions before
// deletions, and after every restore each Service is wholly old or wholly
// new; the last one leaves exactly the rules a single sync would.
func TestBoundedSyncsStepThroughConsistentStates(t *testing.T) {
	ctx := context.Background()
	cfg := RenderConfig{Family: v1.IPv4Protocol, MasqueradeBit: 14, ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16")}
	host := iptables.NewFake()
	s := NewSyncer(cfg, host)
	s.MaxRestoreRules = 60
	before := boundSnapshot(svcNames(0, 40), 0)
	if _, err := s.Sync(ctx, before); err != nil {
		t.Fatal(err)
	}
	// Services 0-9 change endpoints, 10-39 go, 40-69 are new.
	after := boundSnapshot(append(svcNames(0, 10), svcNames(40, 70)...), 1)
	oldState, newState := map[int]string{}, map[int]string{}
	oldRules := host.Snapshot()
	freshHost := iptables.NewFake()
	if _, err := NewSyncer(cfg, freshHost).Sync(ctx, after); err != nil {
		t.Fatal(err)
	}
	newRules := freshHost.Snapshot()
	for i := range 70 {
		oldState[i], newState[i] = reached(oldRules, i), reached(newRules, i)
	}

	var steps []int
	firstRestore := len(host.Restores)
	for range 50 {
		res, err := s.Sync(ctx, after)
		if err != nil {
			t.Fatal(err)
		}
		steps = append(steps, res.Pending)
		rs := host.Snapshot()
		for i := range 70 {
			if got := reached(rs, i); got != oldState[i] && got != newState[i] {
				t.Fatalf("after step %d, svc-%03d reaches %s: neither its old %s nor its new %s", len(steps), i, got, oldState[i], newState[i])
			}
		}
		if res.Pending == 0 {
			break
		}
	}
	if len(steps) < 3 || steps[len(steps)-1] != 0 {
		t.Fatalf("pending after each step: %v; want several steps ending at 0", steps)
	}
	for i, text := range host.Restores[firstRestore:] {
		// Each Service port costs 13 rules here; allow one over the bound,
		// and the dispatch leaf it lands in (rewritten whole).
		if n := strings.Count(text, "\n-A ") + strings.Count(text, "\n-X "); n > 60+13+DefaultDispatchLeafSize+4 {
			t.Errorf("restore %d writes or deletes %d rules and chains, bound 60", i, n)
		}
	}
	// Updates came first: the first restore already moved svc-000..009.
	first := host.Restores[firstRestore]
	if !strings.Contains(first, ":8001") {
		t.Errorf("the first bounded restore did not carry the endpoint updates:\n%s", first)
	}
	sorted := func(s string) string {
		lines := strings.Split(s, "\n")
		slices.Sort(lines)
		return strings.Join(lines, "\n")
	}
	// Chains may be in another order (created in another order), no more.
	if got, want := sorted(host.Snapshot().Save()), sorted(newRules.Save()); got != want {
		t.Errorf("after the last step the rules differ from a single sync's:\n%s\n----\n%s", got, want)
	}
	if !slices.IsSortedFunc(steps, func(a, b int) int { return b - a }) {
		t.Errorf("pending did not shrink: %v", steps)
	}
}

// A full sync bigger than the bound (a restart over old rules, here) runs
// as several restores; replaying them one by one, every Service is wholly
// old or wholly new after each, none writes much over the bound, and the
// end state is a single full sync's, stale chains gone.
func TestChunkedFullSyncStepsThroughConsistentStates(t *testing.T) {
	ctx := context.Background()
	cfg := RenderConfig{Family: v1.IPv4Protocol, MasqueradeBit: 14, ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"), DispatchLeafSize: 4}
	host := iptables.NewFake()
	if _, err := NewSyncer(cfg, host).Sync(ctx, boundSnapshot(svcNames(0, 40), 0)); err != nil {
		t.Fatal(err)
	}
	initial := host.Snapshot()
	after := boundSnapshot(svcNames(20, 80), 1)
	fresh := iptables.NewFake()
	if _, err := NewSyncer(cfg, fresh).Sync(ctx, after); err != nil {
		t.Fatal(err)
	}
	oldState, newState := map[int]string{}, map[int]string{}
	for i := range 80 {
		oldState[i], newState[i] = reached(initial, i), reached(fresh.Snapshot(), i)
	}

	restarted := NewSyncer(cfg, host)
	restarted.MaxRestoreRules = 20
	before := len(host.Restores)
	if _, err := restarted.Sync(ctx, after); err != nil {
		t.Fatal(err)
	}
	chunks := host.Restores[before:]
	if len(chunks) < 5 {
		t.Fatalf("a full sync of %d rules with a bound of 20 ran %d restores", strings.Count(fresh.Snapshot().Save(), "\n-A "), len(chunks))
	}
	replay := iptables.NewFake()
	replay.Rules = initial
	for n, text := range chunks {
		if c := strings.Count(text, "\n-A "); c > 20+20 {
			t.Errorf("restore %d writes %d rules, bound 20", n, c)
		}
		if err := replay.Restore(ctx, []byte(text)); err != nil {
			t.Fatalf("restore %d: %v\n%s", n, err, text)
		}
		rs := replay.Snapshot()
		for i := range 80 {
			if got := reached(rs, i); got != oldState[i] && got != newState[i] {
				t.Fatalf("after restore %d, svc-%03d reaches %s: neither its old %s nor its new %s\n%s", n, i, got, oldState[i], newState[i], text)
			}
		}
	}
	sorted := func(s string) string {
		lines := strings.Split(s, "\n")
		slices.Sort(lines)
		return strings.Join(lines, "\n")
	}
	if got, want := sorted(host.Snapshot().Save()), sorted(fresh.Snapshot().Save()); got != want {
		t.Errorf("after a chunked full sync the rules differ from a single full sync's:\n%s\n----\n%s", got, want)
	}
}

// A new Service that got the address of a Service whose deletion is still
// queued takes it over in the first bounded step: the deletion goes with it.
func TestBoundedSyncsMoveAReusedAddressAtOnce(t *testing.T) {
	ctx := context.Background()
	cfg := RenderConfig{Family: v1.IPv4Protocol, MasqueradeBit: 14, ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16")}
	host := iptables.NewFake()
	s := NewSyncer(cfg, host)
	s.MaxRestoreRules = 40 // svc-000 (unchanged, but a new object: an update) and zz-new fit
	if _, err := s.Sync(ctx, boundSnapshot(svcNames(0, 40), 0)); err != nil {
		t.Fatal(err)
	}
	// Everything but svc-000 goes; "zz-new" (last in name order) takes
	// svc-039's address.
	after := boundSnapshot(svcNames(0, 1), 0)
	name := ServicePortName{Namespace: "b", Name: "zz-new", Port: "http", Protocol: v1.ProtocolTCP}
	after.Services[name] = &ServicePort{Name: name, Port: 80, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.39")}}
	after.Endpoints[name] = []Endpoint{{Addr: netip.MustParseAddr("10.244.7.7"), Port: 9999, Ready: true, Serving: true}}
	res, err := s.Sync(ctx, after)
	if err != nil {
		t.Fatal(err)
	}
	if res.Pending == 0 {
		t.Fatalf("the change fit in one step; the test needs it bounded")
	}
	if got := reached(host.Snapshot(), 39); got != "10.244.7.7:9999" {
		t.Errorf("after the first bounded step 10.96.0.39 reaches %s, want the new Service's 10.244.7.7:9999", got)
	}
}

// When a change crosses the large-cluster threshold (here: every
// EndpointSlice of 400 Services deleted, 1,200 endpoints to none, as when
// a namespace goes), every port's rules change form, and the sync applies
// the wanted state at once. Stepping through it never converged: ports
// already moved stayed "changed" (rendered under the other key) and took
// the bound of every later step.
func TestBoundedSyncsConvergeAcrossTheLargeClusterThreshold(t *testing.T) {
	ctx := context.Background()
	cfg := RenderConfig{Family: v1.IPv4Protocol, MasqueradeBit: 14, ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16")}
	var names []string
	for i := range 400 {
		names = append(names, fmt.Sprintf("svc-%03d", i))
	}
	before := boundSnapshot(names, 0)
	if n := 3 * len(names); n <= LargeClusterEndpoints {
		t.Fatalf("%d endpoints do not make a large cluster", n)
	}
	after := NewSnapshot()
	for n, svc := range before.Services {
		after.Services[n] = svc
	}
	host := iptables.NewFake()
	s := NewSyncer(cfg, host)
	s.MaxRestoreRules = 60
	if _, err := s.Sync(ctx, before); err != nil {
		t.Fatal(err)
	}
	var steps []int
	for range 20 {
		res, err := s.Sync(ctx, after)
		if err != nil {
			t.Fatal(err)
		}
		steps = append(steps, res.Pending)
		if res.Pending == 0 {
			break
		}
	}
	if steps[len(steps)-1] != 0 {
		t.Fatalf("pending after each step: %v; want 0 within 20 steps", steps)
	}
	fresh := iptables.NewFake()
	if _, err := NewSyncer(cfg, fresh).Sync(ctx, after); err != nil {
		t.Fatal(err)
	}
	for i := range 400 {
		if got, want := reached(host.Snapshot(), i), reached(fresh.Snapshot(), i); got != want {
			t.Fatalf("svc-%03d reaches %s after the steps, %s after a single sync", i, got, want)
		}
	}
}
