// Package integration runs switchyard's rules through the real iptables of
// both backends in throwaway network namespaces, and sends real packets
// through them. The tests need root; without it they skip, except under CI.
package integration

import (
	"context"
	"errors"
	"io"
	"math/rand"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/internal/fuzzgen"
	"github.com/switchyard-proxy/switchyard/pkg/iptables"
	"github.com/switchyard-proxy/switchyard/pkg/manifest"
	"github.com/switchyard-proxy/switchyard/pkg/proxier"
	"github.com/switchyard-proxy/switchyard/test/netns"
)

var binary string // the switchyard binary, built once by TestMain

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "switchyard-it")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "switchyard")
	out, err := exec.Command("go", "build", "-o", binary, "../../cmd/switchyard").CombinedOutput()
	if err != nil {
		os.Stderr.Write(out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var backends = []iptables.Backend{iptables.BackendLegacy, iptables.BackendNFT}

func cfg() proxier.RenderConfig {
	return proxier.RenderConfig{Family: v1.IPv4Protocol, ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"), MasqueradeBit: 14, LocalhostNodePorts: true}
}

func snapshot(services map[string]int) *proxier.Snapshot {
	snap := proxier.NewSnapshot()
	i := 0
	names := make([]string, 0, len(services))
	for n := range services {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		i++
		sp := proxier.ServicePortName{Namespace: "default", Name: name, Port: "http", Protocol: v1.ProtocolTCP}
		snap.Services[sp] = &proxier.ServicePort{Name: sp, Port: 80, ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, 0, byte(i)})}}
		for e := 0; e < services[name]; e++ {
			snap.Endpoints[sp] = append(snap.Endpoints[sp], proxier.Endpoint{
				Addr: netip.AddrFrom4([4]byte{10, 244, byte(i), byte(e + 1)}), Port: 8080, Ready: true, Serving: true})
		}
	}
	return snap
}

// hostChains reads the namespace's SWY- chains and the number of rules in
// each, per table, and the jumps from built-in chains to ours.
func hostChains(t *testing.T, r *iptables.Runner) (map[string]map[string]int, []string) {
	t.Helper()
	chains := map[string]map[string]int{}
	var jumps []string
	for _, table := range []string{"nat", "filter"} {
		out, err := r.Save(context.Background(), table)
		if err != nil {
			t.Fatal(err)
		}
		rs, err := iptables.ParseSave(string(out))
		if err != nil {
			t.Fatalf("our parser rejects real save output: %v\n%s", err, out)
		}
		chains[table] = map[string]int{}
		for _, name := range rs.ChainNames(table, proxier.ChainPrefix) {
			chains[table][name] = len(rs.Tables[table].Chains[name].Rules)
		}
		for _, c := range rs.Tables[table].Chains {
			if !c.Builtin {
				continue
			}
			for _, rule := range c.Rules {
				if strings.HasPrefix(rule.Target, proxier.ChainPrefix) {
					jumps = append(jumps, table+"/"+c.Name+"->"+rule.Target)
				}
			}
		}
	}
	sort.Strings(jumps)
	return chains, jumps
}

func wantChains(r *proxier.Rules) map[string]map[string]int {
	out := map[string]map[string]int{}
	for _, t := range r.Tables {
		out[t.Name] = map[string]int{}
		for _, c := range t.Chains {
			out[t.Name][c.Name] = len(c.Rules)
		}
	}
	return out
}

func wantJumps() []string {
	var out []string
	for _, j := range proxier.BaseJumps() {
		out = append(out, j.Table+"/"+j.Chain+"->"+j.Target)
	}
	sort.Strings(out)
	return out
}

func sameChains(t *testing.T, step string, got, want map[string]map[string]int) {
	t.Helper()
	for _, table := range []string{"nat", "filter"} {
		for name, n := range want[table] {
			have, ok := got[table][name]
			if !ok {
				t.Errorf("%s: %s chain %s is missing on the host", step, table, name)
			} else if have != n {
				t.Errorf("%s: %s chain %s has %d rules on the host, want %d", step, table, name, have, n)
			}
		}
		for name := range got[table] {
			if _, ok := want[table][name]; !ok {
				t.Errorf("%s: %s chain %s leaked", step, table, name)
			}
		}
	}
}

// foreign is what another program (kube-proxy, a firewall) has in the
// namespace before switchyard arrives; it must survive everything.
const foreign = `*filter
:FORWARD DROP [0:0]
:KUBE-FIREWALL - [0:0]
-A INPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -j DROP
COMMIT
*nat
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.200.1/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.200.1:80
COMMIT
`

func saveAll(t *testing.T, r *iptables.Runner) string {
	t.Helper()
	var b strings.Builder
	for _, table := range []string{"nat", "filter"} {
		out, err := r.Save(context.Background(), table)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if !strings.HasPrefix(l, "#") {
				b.WriteString(l + "\n")
			}
		}
	}
	return b.String()
}

// jumpOrder checks that each built-in chain's jumps to our chains are in
// BaseJumps order.
func jumpOrder(t *testing.T, step, save string) {
	t.Helper()
	got := map[string][]string{}
	table := ""
	for _, l := range strings.Split(save, "\n") {
		if strings.HasPrefix(l, "*") {
			table = l[1:]
		}
		f := strings.Fields(l)
		if len(f) > 2 && f[0] == "-A" && !strings.HasPrefix(f[1], proxier.ChainPrefix) && strings.HasPrefix(f[len(f)-1], proxier.ChainPrefix) {
			got[table+"/"+f[1]] = append(got[table+"/"+f[1]], f[len(f)-1])
		}
	}
	want := map[string][]string{}
	for _, j := range proxier.BaseJumps() {
		want[j.Table+"/"+j.Chain] = append(want[j.Table+"/"+j.Chain], j.Target)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s: jumps by chain %v, want %v", step, got, want)
	}
}

func TestRealIptablesSyncsLeaveExactlyTheExpectedChains(t *testing.T) {
	netns.RequireRoot(t, "iptables-legacy-restore", "iptables-nft-restore")
	for _, backend := range backends {
		t.Run(string(backend), func(t *testing.T) {
			ns := netns.New(t, "ipt")
			err := ns.Do(func() error {
				ctx := context.Background()
				r, err := iptables.NewRunner(ctx, iptables.IPv4, backend)
				if err != nil {
					return err
				}
				if r.Backend() != backend {
					t.Fatalf("runner uses %s, want %s", r.Backend(), backend)
				}
				if err := r.Restore(ctx, []byte(foreign)); err != nil {
					return err
				}
				before := saveAll(t, r)

				s := proxier.NewSyncer(cfg(), r)
				steps := []struct {
					name     string
					services map[string]int
				}{
					{"create", map[string]int{"web": 2, "db": 3, "empty": 0}},
					{"scale and replace", map[string]int{"web": 5, "db": 1, "cache": 2, "empty": 0}},
					{"endpoints gone", map[string]int{"web": 0, "db": 1, "cache": 2}},
					{"delete all", map[string]int{}},
					{"recreate", map[string]int{"web": 2, "db": 3}},
				}
				for _, st := range steps {
					snap := snapshot(st.services)
					if _, err := s.Sync(ctx, snap); err != nil {
						t.Fatalf("%s: %v", st.name, err)
					}
					jumpOrder(t, st.name, saveAll(t, r))
					got, jumps := hostChains(t, r)
					sameChains(t, st.name, got, wantChains(proxier.Render(snap, cfg())))
					if strings.Join(jumps, ",") != strings.Join(wantJumps(), ",") {
						t.Errorf("%s: jumps %v, want %v", st.name, jumps, wantJumps())
					}
				}

				// A restart: a new syncer adopts the rules (full sync, no
				// flush first) and neither duplicates jumps nor leaks chains.
				restarted := proxier.NewSyncer(cfg(), r)
				snap := snapshot(map[string]int{"web": 2})
				res, err := restarted.Sync(ctx, snap)
				if err != nil {
					t.Fatal(err)
				}
				if !res.Full {
					t.Error("first sync after restart was not full")
				}
				got, jumps := hostChains(t, r)
				sameChains(t, "restart", got, wantChains(proxier.Render(snap, cfg())))
				if strings.Join(jumps, ",") != strings.Join(wantJumps(), ",") {
					t.Errorf("restart: jumps %v, want %v", jumps, wantJumps())
				}
				if ok, err := restarted.Check(ctx); !ok || err != nil {
					t.Errorf("check after restart: %v %v", ok, err)
				}

				// Someone flushes nat PREROUTING: the check notices, a full
				// sync repairs. (Another program: what goes through the
				// runner is switchyard's own, which the legacy check trusts.)
				tool := map[iptables.Backend]string{iptables.BackendLegacy: "iptables-legacy", iptables.BackendNFT: "iptables-nft"}[backend]
				if out, err := exec.Command(tool, "-t", "nat", "-F", "PREROUTING").CombinedOutput(); err != nil {
					t.Fatalf("flushing PREROUTING: %v: %s", err, out)
				}
				if ok, _ := restarted.Check(ctx); ok {
					t.Error("check missed a flushed PREROUTING")
				}
				if _, err := restarted.Sync(ctx, snap); err != nil {
					t.Fatal(err)
				}
				if ok, _ := restarted.Check(ctx); !ok {
					t.Error("full sync did not restore the jumps")
				}
				// Someone deletes one jump with extra matches from the
				// middle of filter INPUT: the check notices it, and the
				// repair inserts it once, leaving the others alone.
				del := exec.Command(tool, "-t", "filter", "-D", "INPUT", "-m", "conntrack", "--ctstate", "NEW",
					"-m", "comment", "--comment", "switchyard load balancer firewall", "-j", "SWY-PROXY-FIREWALL")
				if out, err := del.CombinedOutput(); err != nil {
					t.Fatalf("deleting a jump: %v: %s", err, out)
				}
				if ok, _ := restarted.Check(ctx); ok {
					t.Error("check missed a deleted filter INPUT jump")
				}
				if _, err := restarted.Sync(ctx, snap); err != nil {
					t.Fatal(err)
				}
				if _, jumps := hostChains(t, r); strings.Join(jumps, ",") != strings.Join(wantJumps(), ",") {
					t.Errorf("after repairing one jump: jumps %v, want %v", jumps, wantJumps())
				}
				if ok, err := restarted.Check(ctx); !ok || err != nil {
					t.Errorf("check after repairing one jump: %v %v", ok, err)
				}

				// Put kube-proxy's jump back as it was (we flushed it above).
				if err := r.Restore(ctx, []byte("*nat\n-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\nCOMMIT\n")); err != nil {
					return err
				}

				// cleanup leaves the namespace as it found it.
				out, err := exec.Command(binary, "cleanup").CombinedOutput()
				if err != nil {
					t.Fatalf("switchyard cleanup: %v\n%s", err, out)
				}
				after := saveAll(t, r)
				if normalise(after) != normalise(before) {
					t.Errorf("cleanup did not restore the namespace:\nbefore:\n%s\nafter:\n%s", before, after)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// normalise drops counters and orders lines within each table, since the
// order of jumps inserted at the top of built-in chains may differ.
func normalise(save string) string {
	var lines []string
	for _, l := range strings.Split(save, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			if strings.HasPrefix(l, ":") {
				l = l[:strings.LastIndex(l, " ")]
			}
			lines = append(lines, l)
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// Everything in the golden catalogue must be accepted by the real
// iptables-restore of both backends (checked with --test, nothing applied)
// and then applied for real into a fresh namespace.
func TestRealIptablesAcceptsRenderedCatalogue(t *testing.T) {
	netns.RequireRoot(t, "iptables-legacy-restore", "iptables-nft-restore")
	files, err := filepath.Glob("../../pkg/proxier/testdata/objects/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no catalogue: %v", err)
	}
	for _, backend := range backends {
		for _, f := range files {
			t.Run(string(backend)+"/"+filepath.Base(f), func(t *testing.T) {
				objs, err := manifest.Load([]string{f}, nil)
				if err != nil {
					t.Fatal(err)
				}
				snap, _ := proxier.SnapshotFromObjects(proxier.Filter{}, "node-a", objs.Services, objs.Slices, objs.Nodes)
				v6 := cfg()
				v6.Family = v1.IPv6Protocol
				v6.ClusterCIDR = netip.MustParsePrefix("fd00:10:244::/48")
				ns := netns.New(t, "cat")
				for _, c := range []struct {
					tool string
					cfg  proxier.RenderConfig
				}{{"iptables", cfg()}, {"ip6tables", v6}} {
					text := proxier.RestoreText(proxier.Render(snap, c.cfg))
					restore := c.tool + "-" + string(backend) + "-restore"
					if out, err := ns.RunInput([]byte(text), restore, "--test", "--noflush"); err != nil {
						t.Fatalf("%s --test rejects the rendered rules: %v\n%s\n%s", restore, err, out, text)
					}
					if out, err := ns.RunInput([]byte(text), restore, "--noflush"); err != nil {
						t.Fatalf("%s rejects the rendered rules: %v\n%s", restore, err, out)
					}
				}
			})
		}
	}
}

// Backend detection picks whichever backend already holds the node's rules.
func TestRealBackendDetection(t *testing.T) {
	netns.RequireRoot(t, "iptables-legacy-restore", "iptables-nft-restore")
	seed := "*nat\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n"
	for _, c := range []struct {
		seedWith string
		want     iptables.Backend
	}{
		{"", iptables.BackendNFT},
		{"iptables-legacy-restore", iptables.BackendLegacy},
		{"iptables-nft-restore", iptables.BackendNFT},
	} {
		ns := netns.New(t, "detect")
		if c.seedWith != "" {
			if out, err := ns.RunInput([]byte(seed), c.seedWith, "--noflush"); err != nil {
				t.Fatalf("seeding: %v\n%s", err, out)
			}
		}
		var got iptables.Backend
		if err := ns.Do(func() error {
			got = iptables.DetectBackend(context.Background(), iptables.IPv4)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if got != c.want {
			t.Errorf("seeded with %q: detected %s, want %s", c.seedWith, got, c.want)
		}
	}
}

// cleanup --kube-proxy also removes kube-proxy's nftables-mode tables, and
// only those.
func TestCleanupKubeProxyNFTables(t *testing.T) {
	netns.RequireRoot(t, "nft")
	ns := netns.New(t, "nft")
	for _, args := range [][]string{
		{"nft", "add", "table", "ip", "kube-proxy"},
		{"nft", "add", "table", "ip6", "kube-proxy"},
		{"nft", "add", "table", "ip", "somebody-else"},
	} {
		ns.MustRun(args...)
	}
	out, err := ns.Run(binary, "cleanup", "--kube-proxy")
	if err != nil {
		t.Fatalf("cleanup --kube-proxy: %v\n%s", err, out)
	}
	tables := ns.MustRun("nft", "list", "tables")
	if strings.Contains(tables, "kube-proxy") {
		t.Errorf("kube-proxy tables left:\n%s", tables)
	}
	if !strings.Contains(tables, "somebody-else") {
		t.Errorf("another tool's table was removed:\n%s", tables)
	}
}

// Shapes from the fuzz generator (odd names, every policy and state, both
// families) must be accepted by the real iptables-restore --test too.
func TestRealIptablesAcceptsGeneratedShapes(t *testing.T) {
	netns.RequireRoot(t, "iptables-legacy-restore", "iptables-nft-restore", "ip6tables-nft-restore")
	ns := netns.New(t, "gen")
	rnd := rand.New(rand.NewSource(1))
	for i := 0; i < 40; i++ {
		data := make([]byte, 64)
		rnd.Read(data)
		snap := fuzzgen.Snapshot(data)
		for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
			text := proxier.RestoreText(proxier.Render(snap, fuzzgen.Config(data, fam)))
			tool := "iptables"
			if fam == v1.IPv6Protocol {
				tool = "ip6tables"
			}
			for _, backend := range backends {
				restore := tool + "-" + string(backend) + "-restore"
				if out, err := ns.RunInput([]byte(text), restore, "--test", "--noflush"); err != nil {
					t.Fatalf("shape %d (%x): %s --test rejects: %v\n%s\n%s", i, data, restore, err, out, text)
				}
			}
		}
	}
}

// A streamed restore applies what it is fed; one whose writer fails midway
// changes nothing, even with the table's lines already sent.
func TestRestoreStreamCommitsWholeOrNothing(t *testing.T) {
	netns.RequireRoot(t, "iptables-legacy-restore", "iptables-nft-restore")
	for _, backend := range backends {
		t.Run(string(backend), func(t *testing.T) {
			ns := netns.New(t, "stream")
			err := ns.Do(func() error {
				ctx := context.Background()
				r, err := iptables.NewRunner(ctx, iptables.IPv4, backend)
				if err != nil {
					return err
				}
				feed := func(text string, fail error) error {
					return r.RestoreStream(ctx, func(w io.Writer) error {
						if _, err := io.WriteString(w, text); err != nil {
							return err
						}
						return fail
					})
				}
				if err := feed("*nat\n:SWY-STREAM-A - [0:0]\n-A SWY-STREAM-A -j RETURN\nCOMMIT\n", nil); err != nil {
					t.Fatalf("streamed restore: %v", err)
				}
				broken := errors.New("renderer gave up")
				if err := feed("*nat\n:SWY-STREAM-B - [0:0]\n-A SWY-STREAM-B -j RETURN\n-F SWY-STREAM-A\n", broken); !errors.Is(err, broken) {
					t.Fatalf("a failed writer: err = %v, want %v", err, broken)
				}
				got := saveAll(t, r)
				if !strings.Contains(got, "-A SWY-STREAM-A -j RETURN") {
					t.Errorf("the first streamed restore is not applied, or the failed one flushed it:\n%s", got)
				}
				if strings.Contains(got, "SWY-STREAM-B") {
					t.Errorf("a restore whose writer failed changed the table:\n%s", got)
				}
				if err := feed("*nat\n-A NO-SUCH-CHAIN -j RETURN\nCOMMIT\n", nil); err == nil {
					t.Error("a restore iptables refuses was reported as success")
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// On legacy every listing loads the whole table, so the integrity check
// lists chains only when a table is not as it was last seen intact (or
// as switchyard's own restores left it), and on every tenth check anyway.
// A change by another program, even one followed by a restore of ours,
// makes the next check list, and fail.
func TestLegacyCheckListsOnlyWhenATableChanged(t *testing.T) {
	netns.RequireRoot(t, "iptables-legacy-restore")
	ns := netns.New(t, "quick")
	err := ns.Do(func() error {
		ctx := context.Background()
		r, err := iptables.NewRunner(ctx, iptables.IPv4, iptables.BackendLegacy)
		if err != nil {
			return err
		}
		s := proxier.NewSyncer(cfg(), r)
		sync := func(services map[string]int) {
			t.Helper()
			if _, err := s.Sync(ctx, snapshot(services)); err != nil {
				t.Fatal(err)
			}
		}
		check := func(step string, wantOK, wantListed bool) {
			t.Helper()
			full0, _ := r.Checks()
			ok, err := s.Check(ctx)
			full1, _ := r.Checks()
			if ok != wantOK || err != nil {
				t.Errorf("%s: check = %v (%v), want %v", step, ok, err, wantOK)
			}
			if listed := full1 > full0; listed != wantListed {
				t.Errorf("%s: check listed chains: %v, want %v", step, listed, wantListed)
			}
		}
		deleteJump := func() {
			t.Helper()
			out, err := exec.Command("iptables-legacy", "-t", "nat", "-D", "OUTPUT",
				"-m", "comment", "--comment", "switchyard service portals", "-j", "SWY-SERVICES").CombinedOutput()
			if err != nil {
				t.Fatalf("deleting the nat OUTPUT jump: %v: %s", err, out)
			}
		}

		sync(map[string]int{"web": 2, "db": 1})
		check("first", true, true)
		check("nothing changed", true, false)
		sync(map[string]int{"web": 3, "db": 1, "cache": 1})
		check("after a sync of ours", true, false)

		deleteJump()
		check("a jump deleted by another program", false, true)
		sync(map[string]int{"web": 3, "db": 1, "cache": 1}) // full: the failed check asked for it
		check("repaired", true, true)
		check("nothing changed since the repair", true, false)

		deleteJump()
		sync(map[string]int{"web": 1, "db": 1, "cache": 1}) // partial: it does not know
		check("a jump deleted, then a sync of ours", false, true)
		sync(map[string]int{"web": 1, "db": 1, "cache": 1})
		check("repaired again", true, true)

		// Every tenth check lists even when nothing changed.
		full0, quick0 := r.Checks()
		for range 10 {
			if ok, err := s.Check(ctx); !ok || err != nil {
				t.Fatalf("check on intact rules: %v %v", ok, err)
			}
		}
		full1, quick1 := r.Checks()
		if full1-full0 != 1 || quick1-quick0 != 9 {
			t.Errorf("ten quiet checks: %d listed, %d answered by the summaries; want 1 and 9", full1-full0, quick1-quick0)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The same for IPv6 (ip6tables-legacy has its own getsockopt level).
func TestLegacyCheckListsOnlyWhenATableChangedIPv6(t *testing.T) {
	netns.RequireRoot(t, "ip6tables-legacy-restore")
	ns := netns.New(t, "quick6")
	err := ns.Do(func() error {
		ctx := context.Background()
		r, err := iptables.NewRunner(ctx, iptables.IPv6, iptables.BackendLegacy)
		if err != nil {
			return err
		}
		jump := iptables.Jump{Table: "filter", Chain: "INPUT", Target: "SWY-QUICK", Comment: "quick"}
		if err := r.Restore(ctx, []byte("*filter\n:SWY-QUICK - [0:0]\n-I INPUT 1 -m comment --comment quick -j SWY-QUICK\nCOMMIT\n")); err != nil {
			return err
		}
		chains := map[string][]string{"filter": {"SWY-QUICK"}}
		for i, want := range []struct{ ok, quick bool }{{true, false}, {true, true}, {false, false}} {
			if i == 2 {
				if out, err := exec.Command("ip6tables-legacy", "-D", "INPUT", "-m", "comment", "--comment", "quick", "-j", "SWY-QUICK").CombinedOutput(); err != nil {
					t.Fatalf("deleting the jump: %v: %s", err, out)
				}
			}
			_, quick0 := r.Checks()
			ok, err := r.Present(ctx, chains, []iptables.Jump{jump})
			_, quick1 := r.Checks()
			if ok != want.ok || err != nil || (quick1 > quick0) != want.quick {
				t.Errorf("check %d: ok %v (%v), answered by the summary %v; want %v, %v", i, ok, err, quick1 > quick0, want.ok, want.quick)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// kube-proxy's --cleanup: switchyard's chains, an old kube-proxy's
// (iptables mode, both backends) and its nftables-mode tables go, the
// process exits 0, and nothing else is touched.
func TestCleanupFlagAsKubeProxys(t *testing.T) {
	netns.RequireRoot(t, "nft", "iptables-legacy-restore", "iptables-nft-restore")
	ns := netns.New(t, "kpclean")
	seed := "*nat\n:KUBE-SERVICES - [0:0]\n:SWY-SERVICES - [0:0]\n:OTHER - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n-A PREROUTING -j SWY-SERVICES\n-A PREROUTING -j OTHER\nCOMMIT\n"
	for _, restore := range []string{"iptables-nft-restore", "iptables-legacy-restore"} {
		if out, err := ns.RunInput([]byte(seed), restore, "--noflush"); err != nil {
			t.Fatalf("seeding %s: %v\n%s", restore, err, out)
		}
	}
	ns.MustRun("nft", "add", "table", "ip", "kube-proxy")
	out, err := ns.Run(binary, "--cleanup")
	if err != nil {
		t.Fatalf("--cleanup: %v\n%s", err, out)
	}
	for _, save := range []string{"iptables-nft-save", "iptables-legacy-save"} {
		rules := ns.MustRun(save, "-t", "nat")
		if strings.Contains(rules, "KUBE-SERVICES") || strings.Contains(rules, "SWY-SERVICES") {
			t.Errorf("%s: chains left:\n%s", save, rules)
		}
		if !strings.Contains(rules, "-A PREROUTING -j OTHER") {
			t.Errorf("%s: another tool's rule was removed:\n%s", save, rules)
		}
	}
	if tables := ns.MustRun("nft", "list", "tables"); strings.Contains(tables, "kube-proxy") {
		t.Errorf("kube-proxy's nftables table left:\n%s", tables)
	}
}

// kube-proxy's --init-only: the privileged set-up, then exit 0, with no
// API server to talk to.
func TestInitOnlySetsRouteLocalnetAndExits(t *testing.T) {
	netns.RequireRoot(t)
	ns := netns.New(t, "kpinit")
	ns.MustRun("sysctl", "-qw", "net.ipv4.conf.all.route_localnet=0")
	out, err := ns.Run(binary, "--init-only", "--hostname-override=n1", "--conntrack-max-per-core=0")
	if err != nil {
		t.Fatalf("--init-only: %v\n%s", err, out)
	}
	if v := strings.TrimSpace(ns.MustRun("sysctl", "-n", "net.ipv4.conf.all.route_localnet")); v != "1" {
		t.Errorf("route_localnet is %s after --init-only", v)
	}
	if !strings.Contains(out, "--init-only specified") {
		t.Errorf("output: %s", out)
	}
}
