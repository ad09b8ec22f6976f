package iptables

import (
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The testdata *.save files are real iptables-save output (nft and legacy
// backends, iptables 1.8.9) of a namespace holding Docker- and
// kube-proxy-style rules next to switchyard's.
func loadSave(t *testing.T, name string) *Ruleset {
	t.Helper()
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := ParseSave(string(data))
	if err != nil {
		t.Fatalf("parsing %s: %v", name, err)
	}
	return rs
}

func TestParseRealSaveOutputWithForeignRules(t *testing.T) {
	for _, name := range []string{"nft.save", "legacy.save"} {
		t.Run(name, func(t *testing.T) {
			rs := loadSave(t, name)
			filter := rs.Tables["filter"]
			if filter.Chains["FORWARD"].Policy != "DROP" {
				t.Errorf("FORWARD policy = %q, want DROP", filter.Chains["FORWARD"].Policy)
			}
			for _, c := range []string{"DOCKER", "DOCKER-ISOLATION-STAGE-1", "KUBE-FIREWALL", "SWY-FORWARD", "SWY-SERVICES"} {
				if filter.Chains[c] == nil {
					t.Errorf("filter chain %s missing", c)
				}
			}
			// A foreign rule with matches we do not model is kept and named.
			var logRule *Rule
			for _, r := range filter.Chains["INPUT"].Rules {
				if r.Target == "LOG" {
					logRule = r
				}
			}
			if logRule == nil {
				t.Fatal("LOG rule lost")
			}
			if logRule.Matches[0].Module != "limit" || logRule.TargetOption("--log-prefix").Values[0] != "dropped: " {
				t.Errorf("LOG rule parsed as %+v", logRule)
			}
			// Negated generic options and negated match options.
			fw := filter.Chains["KUBE-FIREWALL"].Rules[0]
			if s := fw.GenericOption("-s"); s == nil || !s.Negated || s.Values[0] != "127.0.0.0/8" {
				t.Errorf("! -s parsed as %+v", s)
			}
			var ct *Match
			for i := range fw.Matches {
				if fw.Matches[i].Module == "conntrack" {
					ct = &fw.Matches[i]
				}
			}
			if ct == nil || !ct.Options[0].Negated {
				t.Errorf("negated ctstate lost: %+v", fw.Matches)
			}
			if fw.Comment() != "block incoming localnet connections" {
				t.Errorf("comment = %q", fw.Comment())
			}
			// Round trip: saving and parsing again gives the same rules.
			again, err := ParseSave(rs.Save())
			if err != nil {
				t.Fatal(err)
			}
			if again.Save() != rs.Save() {
				t.Error("save/parse round trip changed the ruleset")
			}
		})
	}
}

func TestTraceThroughRealSaveOutput(t *testing.T) {
	for _, name := range []string{"nft.save", "legacy.save"} {
		rs := loadSave(t, name)
		// Our Service, through iptables' own normalised text (quoted
		// comments, 11-digit probabilities, --set-xmark).
		tr := TracePacket(rs, TraceInput{
			Packet:     Packet{Src: netip.MustParseAddr("10.244.9.9"), Dst: netip.MustParseAddr("10.96.0.10"), DstPort: 80, Protocol: "tcp"},
			LocalAddrs: []netip.Addr{netip.MustParseAddr("192.168.50.10")},
		})
		if got, want := tr.Endpoints(), []string{"10.244.1.5:8080", "10.244.2.7:8080"}; !reflect.DeepEqual(got, want) {
			t.Errorf("%s: endpoints %v, want %v\n%s", name, got, want, tr.Text())
		}
		// FORWARD policy DROP: our SWY-FORWARD accepts nothing for a fresh
		// unmarked pod connection, so the host policy decides, as in the kernel.
		if got := tr.Verdicts(); !reflect.DeepEqual(got, []string{"DROP"}) {
			t.Errorf("%s: verdicts %v, want the host's FORWARD policy DROP", name, got)
		}
		// kube-proxy's Service in the same table is traced too.
		tr = TracePacket(rs, TraceInput{Packet: Packet{Src: netip.MustParseAddr("10.244.9.9"), Dst: netip.MustParseAddr("10.96.0.10"), DstPort: 53, Protocol: "udp"}})
		if got := tr.Endpoints(); !reflect.DeepEqual(got, []string{"10.244.0.3:53"}) {
			t.Errorf("%s: kube-proxy service endpoints %v", name, got)
		}
		// Docker's DNAT for a local port.
		tr = TracePacket(rs, TraceInput{
			Packet:     Packet{Src: netip.MustParseAddr("203.0.113.5"), Dst: netip.MustParseAddr("192.168.50.10"), DstPort: 8080, Protocol: "tcp"},
			LocalAddrs: []netip.Addr{netip.MustParseAddr("192.168.50.10")},
		})
		if len(tr.Unevaluated) == 0 || !strings.Contains(strings.Join(tr.Unevaluated, ";"), "-i docker0") {
			t.Errorf("%s: interface matches were not reported as unevaluated: %v", name, tr.Unevaluated)
		}
	}
}

func TestParseRule(t *testing.T) {
	r, err := ParseRule(`-m comment --comment "a \"quoted\" comment" -p tcp --dport 80 ! -d 10.0.0.0/8 -j DNAT --to-destination 10.1.1.1:80`)
	if err != nil {
		t.Fatal(err)
	}
	if r.Comment() != `a "quoted" comment` {
		t.Errorf("comment = %q", r.Comment())
	}
	if r.Target != "DNAT" || r.TargetOption("--to-destination").Values[0] != "10.1.1.1:80" {
		t.Errorf("target = %s %+v", r.Target, r.TargetArgs)
	}
	if d := r.GenericOption("-d"); d == nil || !d.Negated {
		t.Errorf("-d = %+v", d)
	}
	// "--dport" after -m comment belongs to the comment module's section in
	// iptables' own grammar only when -p loaded tcp implicitly; we keep it.
	found := false
	for _, m := range r.Matches {
		if m.Option("--dport") != nil {
			found = true
		}
	}
	if !found {
		t.Errorf("--dport lost: %+v", r.Matches)
	}
	for _, bad := range []string{`-j`, `-m comment --comment "unterminated`, `stray`, `-s 1.2.3.4 !`, `-j A -j B`} {
		if _, err := ParseRule(bad); err == nil {
			t.Errorf("ParseRule(%q) accepted bad input", bad)
		}
	}
}

func TestRestoreSemantics(t *testing.T) {
	rs := NewRuleset()
	must := func(text string, noflush bool) {
		t.Helper()
		if err := rs.Restore(text, noflush); err != nil {
			t.Fatal(err)
		}
	}
	must("*nat\n:A - [0:0]\n:B - [0:0]\n-A A -j B\n-A B -j RETURN\n-A PREROUTING -j A\nCOMMIT\n", true)

	// Declaring an existing chain flushes it; others are untouched.
	must("*nat\n:B - [0:0]\n-A B -j ACCEPT\nCOMMIT\n", true)
	if got := rs.RuleTexts("nat", "B"); !reflect.DeepEqual(got, []string{"-j ACCEPT"}) {
		t.Errorf("B = %v", got)
	}
	if got := rs.RuleTexts("nat", "A"); len(got) != 1 {
		t.Errorf("A was touched: %v", got)
	}

	// Deleting a referenced chain fails, and the failed table is unchanged.
	before := rs.Save()
	if err := rs.Restore("*nat\n:B - [0:0]\n-X B\nCOMMIT\n", true); err == nil || !strings.Contains(err.Error(), "referenced") {
		t.Errorf("deleting a referenced chain: err = %v", err)
	}
	if rs.Save() != before {
		t.Error("a failed restore changed the table")
	}
	// A jump to a chain that does not exist fails.
	if err := rs.Restore("*nat\n-A A -j NOPE\nCOMMIT\n", true); err == nil {
		t.Error("jump to a missing chain accepted")
	}
	// Built-in chains cannot be deleted; policies stay unless declared.
	if err := rs.Restore("*nat\n-X PREROUTING\nCOMMIT\n", true); err == nil {
		t.Error("deleting a built-in chain accepted")
	}
	// Without --noflush the table is replaced.
	must("*nat\n:C - [0:0]\nCOMMIT\n", false)
	if rs.Tables["nat"].Chains["A"] != nil || rs.Tables["nat"].Chains["C"] == nil {
		t.Error("restore without noflush did not replace the table")
	}
	// -D by rule text and -I position.
	must("*filter\n:X - [0:0]\n-A X -j ACCEPT\n-A X -j DROP\n-I X 2 -j RETURN\n-D X -j ACCEPT\nCOMMIT\n", true)
	if got := rs.RuleTexts("filter", "X"); !reflect.DeepEqual(got, []string{"-j RETURN", "-j DROP"}) {
		t.Errorf("X = %v", got)
	}
	for _, bad := range []string{"*nope\nCOMMIT\n", "*nat\n-A A -j ACCEPT\n", "-A X -j ACCEPT\n", "*nat\n:D ACCEPT [0:0]\nCOMMIT\n"} {
		if err := rs.Restore(bad, true); err == nil {
			t.Errorf("bad restore input accepted: %q", bad)
		}
	}
}

func TestCleanupText(t *testing.T) {
	data, err := os.ReadFile("testdata/nft.save")
	if err != nil {
		t.Fatal(err)
	}
	rs, err := ParseSave(string(data))
	if err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"nat", "filter"} {
		text := CleanupText(table, []byte(rs.Tables[table].save()), Prefix("SWY-"))
		if err := rs.Restore(text, true); err != nil {
			t.Fatalf("%s cleanup does not apply: %v\n%s", table, err, text)
		}
	}
	if strings.Contains(rs.Save(), "SWY-") {
		t.Errorf("cleanup left switchyard rules:\n%s", rs.Save())
	}
	for _, keep := range []string{"KUBE-SERVICES", "DOCKER", "-j LOG", "KUBE-FIREWALL", ":FORWARD DROP"} {
		if !strings.Contains(rs.Save(), keep) {
			t.Errorf("cleanup removed a foreign %q", keep)
		}
	}
	if got := CleanupText("nat", []byte(rs.Tables["nat"].save()), Prefix("SWY-")); got != "" {
		t.Errorf("second cleanup is not empty: %q", got)
	}
}

func TestMarkArithmetic(t *testing.T) {
	rs, err := ParseSave("*nat\n:M - [0:0]\n-A OUTPUT -j M\n-A M -j MARK --set-xmark 0x4000/0x4000\n-A M -m mark --mark 0x4000/0x4000 -j MARK --set-xmark 0x1/0x0\n-A M -m mark ! --mark 0x1/0x1 -j DROP\n-A POSTROUTING -m mark --mark 0x4001 -j MASQUERADE\nCOMMIT\n")
	if err != nil {
		t.Fatal(err)
	}
	tr := TracePacket(rs, TraceInput{Packet: Packet{Src: netip.MustParseAddr("127.0.0.1"), Dst: netip.MustParseAddr("1.1.1.1"), DstPort: 1, Protocol: "tcp"}})
	if len(tr.Outcomes) != 1 || !tr.Outcomes[0].Masquerade || tr.Outcomes[0].Mark != 0x4001 {
		t.Errorf("outcomes %+v", tr.Outcomes)
	}
}

func TestCleanupKubeProxyLeavesOthersAlone(t *testing.T) {
	rs := loadSave(t, "nft.save")
	extra := "*filter\n:KUBE-ROUTER-INPUT - [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\n:KUBE-PROXY-FIREWALL - [0:0]\n-A INPUT -j KUBE-ROUTER-INPUT\n-A INPUT -m conntrack --ctstate NEW -j KUBE-PROXY-FIREWALL\nCOMMIT\n*nat\n:KUBE-XLB-OLDSTYLE - [0:0]\n-A KUBE-SERVICES -j KUBE-XLB-OLDSTYLE\nCOMMIT\n"
	if err := rs.Restore(extra, true); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"nat", "filter"} {
		text := CleanupText(table, []byte(rs.Tables[table].save()), KubeProxyChains)
		if err := rs.Restore(text, true); err != nil {
			t.Fatalf("%s: %v\n%s", table, err, text)
		}
	}
	saved := rs.Save()
	for _, gone := range []string{"KUBE-SERVICES", "KUBE-SVC-", "KUBE-SEP-", "KUBE-MARK-MASQ", "KUBE-PROXY-FIREWALL", "KUBE-XLB-"} {
		if strings.Contains(saved, gone) {
			t.Errorf("%s survived", gone)
		}
	}
	for _, kept := range []string{":KUBE-FIREWALL", ":KUBE-KUBELET-CANARY", ":KUBE-ROUTER-INPUT", "-j KUBE-ROUTER-INPUT", ":SWY-SERVICES", "-j SWY-SERVICES", ":DOCKER"} {
		if !strings.Contains(saved, kept) {
			t.Errorf("%s was removed", kept)
		}
	}
}

func TestTraceRandomLoopIsBounded(t *testing.T) {
	rs, err := ParseSave("*nat\n:A - [0:0]\n-A PREROUTING -j A\n-A A -m statistic --mode random --probability 0.5 -j A\n-A A -m statistic --mode random --probability 0.5 -j A\nCOMMIT\n")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan *Trace, 1)
	go func() {
		done <- TracePacket(rs, TraceInput{Packet: Packet{Src: netip.MustParseAddr("1.1.1.1"), Dst: netip.MustParseAddr("2.2.2.2"), DstPort: 1, Protocol: "tcp"}})
	}()
	select {
	case tr := <-done:
		if len(tr.Outcomes) == 0 || len(tr.Outcomes) > maxBranches+1 || len(tr.Unevaluated) == 0 {
			t.Errorf("%d outcomes, notes %v", len(tr.Outcomes), tr.Unevaluated)
		}
	case <-time.After(2 * time.Minute):
		// A guard against a hang, not a speed bound: under -race on a
		// loaded 2-core machine the bounded walk has taken over 10 s.
		t.Fatal("tracing a random loop did not end")
	}
}
