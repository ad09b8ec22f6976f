package proxier

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
)

// hostRules is every SWY- chain's rules on the fake host.
func hostRules(f *iptables.Fake) map[string][]string {
	out := map[string][]string{}
	rs := f.Snapshot()
	for _, t := range []string{TableNAT, TableFilter} {
		for _, name := range rs.ChainNames(t, ChainPrefix) {
			var texts []string
			for _, r := range rs.Tables[t].Chains[name].Rules {
				texts = append(texts, r.Text)
			}
			out[t+" "+name] = texts
		}
	}
	return out
}

// renderedRules is the same for a fresh render.
func renderedRules(t *testing.T, r *Rules) map[string][]string {
	t.Helper()
	rs, err := iptables.ParseSave(RestoreText(r))
	if err != nil {
		t.Fatal(err)
	}
	f := iptables.NewFake()
	f.Rules = rs
	return hostRules(f)
}

// Random changes, synced one after another, leave the host exactly as a
// fresh render of the last snapshot, and the renderer's rule counts equal
// a count of its chains. The changes share unchanged objects between
// snapshots, as the tracker does, so the renderer's reuse, its walk over
// old and new names and the large-cluster switch are all exercised.
func TestIncrementalSyncsMatchAFreshRender(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(7, 8))
	type entry struct {
		svc *ServicePort
		eps []Endpoint
	}
	world := map[ServicePortName]entry{}
	newEntry := func(i int) (ServicePortName, entry) {
		n := spn(fmt.Sprintf("svc%03d", i), "http")
		vip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
		k := rng.IntN(30)
		eps := make([]Endpoint, k)
		for e := range eps {
			eps[e] = Endpoint{Addr: netip.AddrFrom4([4]byte{10, 244, byte(i), byte(e + rng.IntN(3)*40)}), Port: 8080, Ready: true, Serving: true}
		}
		return n, entry{&ServicePort{Name: n, Port: 80, ClusterIPs: []netip.Addr{vip}}, eps}
	}
	fake := iptables.NewFake()
	s := NewSyncer(defaultConfig(), fake)
	var names []ServicePortName
	seen := map[bool]bool{} // endpoint rules with comments, without
	for step := range 60 {
		namesChanged := false
		for range 1 + rng.IntN(6) {
			i := rng.IntN(120)
			n, e := newEntry(i)
			switch _, ok := world[n]; {
			case !ok || rng.IntN(4) == 0:
				world[n] = e // added, or replaced
				namesChanged = namesChanged || !ok
			case rng.IntN(3) == 0:
				delete(world, n)
				namesChanged = true
			default:
				old := world[n]
				world[n] = entry{old.svc, e.eps} // endpoints only
			}
		}
		snap := NewSnapshot()
		for n, e := range world {
			snap.Services[n] = e.svc
			if len(e.eps) > 0 {
				snap.Endpoints[n] = e.eps
			}
		}
		if namesChanged || names == nil {
			names = snap.SortedNames()
		}
		snap.SetSortedNames(names) // shared while the set is the same
		res, err := s.Sync(ctx, snap)
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		want := renderedRules(t, Render(snap, defaultConfig()))
		got := hostRules(fake)
		for k, w := range want {
			if !slices.Equal(got[k], w) {
				t.Fatalf("step %d (full=%v): %s is\n%q\nwant\n%q", step, res.Full, k, got[k], w)
			}
		}
		for k := range got {
			if _, ok := want[k]; !ok {
				t.Fatalf("step %d: stale chain %s left on the host", step, k)
			}
		}
		for k, rules := range want {
			if strings.Contains(k, " "+sepChainPrefix) {
				seen[strings.Contains(strings.Join(rules, " "), "--comment")] = true
				break
			}
		}
		r := s.Rules()
		var walked ruleCounts
		for _, tb := range r.Tables {
			walked.addChains(tb.Name, tb.Chains)
		}
		if walked != r.counts {
			t.Fatalf("step %d: rule counts %v, walking the chains gives %v", step, r.counts, walked)
		}
	}
	if !seen[true] || !seen[false] {
		t.Errorf("the steps never rendered both sides of %d endpoints (with comments: %v, without: %v)", LargeClusterEndpoints, seen[true], seen[false])
	}
}

// A Service that goes takes its rule out of a dispatch leaf by deleting
// it: the restore adds no rule (on nf_tables, adding one costs a walk of the
// whole table in the kernel), and the host ends as a fresh render.
func TestServiceDeletionOnlyDeletesRules(t *testing.T) {
	ctx := context.Background()
	snap := NewSnapshot()
	for i := range 200 {
		n := spn(fmt.Sprintf("svc%03d", i), "http")
		snap.Services[n] = &ServicePort{Name: n, Port: 80, ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, 0, byte(i)})}}
		snap.Endpoints[n] = []Endpoint{{Addr: netip.AddrFrom4([4]byte{10, 244, 1, byte(i)}), Port: 8080, Ready: true, Serving: true}}
	}
	fake := iptables.NewFake()
	s := NewSyncer(defaultConfig(), fake)
	if _, err := s.Sync(ctx, snap); err != nil {
		t.Fatal(err)
	}
	next := NewSnapshot()
	for n, sp := range snap.Services {
		if n.Name != "svc100" {
			next.Services[n], next.Endpoints[n] = sp, snap.Endpoints[n]
		}
	}
	if _, err := s.Sync(ctx, next); err != nil {
		t.Fatal(err)
	}
	text := fake.Restores[len(fake.Restores)-1]
	if !strings.Contains(text, "\n-D "+dispatchChainPrefix) || strings.Contains(text, "\n-A ") {
		t.Errorf("deleting a Service should delete its dispatch rule and add none:\n%s", text)
	}
	hostIsRendered(t, fake, next)
}

func TestRemovedOnly(t *testing.T) {
	for _, c := range []struct {
		old, next, want []string
	}{
		{[]string{"a", "b", "c"}, []string{"a", "c"}, []string{"b"}},
		{[]string{"a", "b", "c", "d"}, []string{"b"}, []string{"a", "c", "d"}},
		{[]string{"a", "b"}, []string{"a", "b"}, nil},      // nothing removed
		{[]string{"a", "b"}, nil, nil},                     // emptied: a flush does it
		{[]string{"a", "b", "c"}, []string{"c", "a"}, nil}, // reordered
		{[]string{"a", "b"}, []string{"a", "x"}, nil},      // a rule added
		{[]string{"a", "b", "a"}, []string{"b", "a"}, nil}, // "-D a" would take the first
	} {
		if got := removedOnly(c.old, c.next); !slices.Equal(got, c.want) {
			t.Errorf("removedOnly(%q, %q) = %q, want %q", c.old, c.next, got, c.want)
		}
	}
}

func TestInsertedOnly(t *testing.T) {
	for _, c := range []struct {
		old, next []string
		want      []insertion
	}{
		{[]string{"a", "c"}, []string{"a", "b", "c"}, []insertion{{2, "b"}}},
		{[]string{"b", "d"}, []string{"a", "b", "c", "d", "e"}, []insertion{{1, "a"}, {3, "c"}, {5, "e"}}},
		{[]string{"a"}, []string{"a", "a"}, []insertion{{2, "a"}}},
		{[]string{"a", "b"}, []string{"a", "b"}, nil}, // nothing added
		{nil, []string{"a"}, nil},                          // was empty: written whole
		{[]string{"a", "b"}, []string{"b", "a", "c"}, nil}, // reordered
		{[]string{"a", "b"}, []string{"a", "x", "c"}, nil}, // a rule removed
	} {
		if got := insertedOnly(c.old, c.next); !slices.Equal(got, c.want) {
			t.Errorf("insertedOnly(%q, %q) = %v, want %v", c.old, c.next, got, c.want)
		}
	}
}

// A new Service in a large node goes into its dispatch leaf by "-I" at its
// place, the leaf is not written again, and the host ends as a fresh
// render: several new Services in one sync, some sharing a leaf.
func TestNewServicesAreInsertedIntoTheirLeaves(t *testing.T) {
	ctx := context.Background()
	snap := NewSnapshot()
	add := func(s *Snapshot, i int) {
		n := spn(fmt.Sprintf("svc%03d", i), "http")
		s.Services[n] = &ServicePort{Name: n, Port: 80, ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i / 100), byte(i)})}}
		s.Endpoints[n] = []Endpoint{{Addr: netip.AddrFrom4([4]byte{10, 244, 1, byte(i)}), Port: 8080, Ready: true, Serving: true}}
	}
	for i := 0; i < 200; i += 2 {
		add(snap, i)
	}
	fake := iptables.NewFake()
	s := NewSyncer(defaultConfig(), fake)
	if _, err := s.Sync(ctx, snap); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{1, 3, 101, 199} {
		add(snap, i)
	}
	if _, err := s.Sync(ctx, snap); err != nil {
		t.Fatal(err)
	}
	text := fake.Restores[len(fake.Restores)-1]
	if n := strings.Count(text, "\n-I "+dispatchChainPrefix); n != 4 {
		t.Errorf("%d dispatch rules inserted, want 4:\n%s", n, text)
	}
	if strings.Contains(text, "\n:"+dispatchChainPrefix) || strings.Contains(text, "\n-A "+dispatchChainPrefix) {
		t.Errorf("a dispatch leaf was written again:\n%s", text)
	}
	hostIsRendered(t, fake, snap)
}

// hostIsRendered fails the test unless the fake host holds exactly a fresh
// render of snap.
func hostIsRendered(t *testing.T, fake *iptables.Fake, snap *Snapshot) {
	t.Helper()
	want, got := renderedRules(t, Render(snap, defaultConfig())), hostRules(fake)
	if len(got) != len(want) {
		t.Fatalf("%d chains on the host, want %d", len(got), len(want))
	}
	for k, w := range want {
		if !slices.Equal(got[k], w) {
			t.Fatalf("%s is\n%q\nwant\n%q", k, got[k], w)
		}
	}
}
