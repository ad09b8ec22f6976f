package iptables

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// Packet is the first packet of a new connection, as the tracer sees it.
type Packet struct {
	Src      netip.Addr
	Dst      netip.Addr
	SrcPort  int
	DstPort  int
	Protocol string // tcp, udp, sctp
	// InIface and OutIface are optional; rules matching interfaces are
	// reported as not evaluated when they are empty.
	InIface  string
	OutIface string
}

// TraceInput is what the tracer needs besides the ruleset.
type TraceInput struct {
	Packet Packet
	// LocalAddrs are the node's own addresses (for addrtype LOCAL and for
	// deciding whether the packet originates on the node).
	LocalAddrs []netip.Addr
}

// Step is one rule a packet matched (or one chain policy it hit).
type Step struct {
	Table   string `json:"table"`
	Chain   string `json:"chain"`
	Rule    int    `json:"rule"` // 1-based; 0 for a chain policy
	Text    string `json:"text"`
	Comment string `json:"comment,omitempty"`
}

// Outcome is one possible fate of the packet. Random choices (statistic
// matches) make several outcomes possible; each is one branch.
type Outcome struct {
	// Verdict is ACCEPT, DROP or REJECT.
	Verdict string `json:"verdict"`
	// DNAT is the rewritten destination, when a DNAT rule matched.
	DNAT       string `json:"dnat,omitempty"`
	Masquerade bool   `json:"masquerade"`
	SNAT       string `json:"snat,omitempty"`
	Mark       uint32 `json:"mark"`
	Path       []Step `json:"path"`
	// Random is true when a statistic match chose this branch.
	Random bool `json:"random"`
}

// Trace is the result of tracing one packet.
type Trace struct {
	Local    bool      `json:"local"` // entered through OUTPUT (source is local)
	Outcomes []Outcome `json:"outcomes"`
	// Unevaluated names matches the tracer could not evaluate; rules that
	// used them were treated as not matching.
	Unevaluated []string `json:"unevaluated,omitempty"`
	// Assumptions the tracer made (e.g. no earlier affinity entry).
	Assumptions []string `json:"assumptions,omitempty"`
}

// Endpoints returns the distinct DNAT destinations across outcomes, sorted,
// whatever the filter table did with the packet afterwards.
func (t *Trace) Endpoints() []string {
	seen := map[string]bool{}
	var out []string
	for _, o := range t.Outcomes {
		if o.DNAT != "" && !seen[o.DNAT] {
			seen[o.DNAT] = true
			out = append(out, o.DNAT)
		}
	}
	sort.Strings(out)
	return out
}

// Verdicts returns the distinct verdicts across outcomes, sorted.
func (t *Trace) Verdicts() []string {
	seen := map[string]bool{}
	var out []string
	for _, o := range t.Outcomes {
		if !seen[o.Verdict] {
			seen[o.Verdict] = true
			out = append(out, o.Verdict)
		}
	}
	sort.Strings(out)
	return out
}

// state is one branch of a packet walking the rules.
type state struct {
	dst     netip.Addr
	dstPort int
	mark    uint32
	dnat    string
	masq    bool
	snat    string
	path    []Step
	random  bool
	verdict string // terminal verdict within the current table walk
}

func (s state) fork() state {
	s.path = append([]Step{}, s.path...)
	return s
}

type tracer struct {
	forks int
	rs    *Ruleset
	in    TraceInput
	local map[netip.Addr]bool
	trace *Trace
	notes map[string]bool
}

// TracePacket walks a new connection's first packet through the nat and
// filter tables: nat PREROUTING (or OUTPUT when the source is local), then
// filter INPUT, FORWARD or OUTPUT, then nat POSTROUTING, forking at every
// random choice.
func TracePacket(rs *Ruleset, in TraceInput) *Trace {
	t := &tracer{rs: rs, in: in, local: map[netip.Addr]bool{}, trace: &Trace{}, notes: map[string]bool{}}
	for _, a := range in.LocalAddrs {
		t.local[a.Unmap()] = true
	}
	p := in.Packet
	t.trace.Local = t.isLocal(p.Src)
	start := state{dst: p.Dst, dstPort: p.DstPort}

	natHook := "PREROUTING"
	if t.trace.Local {
		natHook = "OUTPUT"
	}
	for _, s := range t.walkHook("nat", natHook, start) {
		if s.verdict != "ACCEPT" {
			t.finish(s)
			continue
		}
		filterHook := "FORWARD"
		switch {
		case t.trace.Local:
			filterHook = "OUTPUT"
		case t.isLocal(s.dst):
			filterHook = "INPUT"
		}
		for _, f := range t.walkHook("filter", filterHook, s) {
			if f.verdict != "ACCEPT" || filterHook == "INPUT" {
				t.finish(f)
				continue
			}
			for _, post := range t.walkHook("nat", "POSTROUTING", f) {
				t.finish(post)
			}
		}
	}
	for n := range t.notes {
		if strings.HasPrefix(n, "assume:") {
			t.trace.Assumptions = append(t.trace.Assumptions, strings.TrimPrefix(n, "assume:"))
		} else {
			t.trace.Unevaluated = append(t.trace.Unevaluated, n)
		}
	}
	sort.Strings(t.trace.Unevaluated)
	sort.Strings(t.trace.Assumptions)
	return t.trace
}

func (t *tracer) finish(s state) {
	t.trace.Outcomes = append(t.trace.Outcomes, Outcome{
		Verdict: s.verdict, DNAT: s.dnat, Masquerade: s.masq, SNAT: s.snat, Mark: s.mark, Path: s.path, Random: s.random,
	})
}

func (t *tracer) isLocal(a netip.Addr) bool {
	a = a.Unmap()
	return t.local[a] || a.IsLoopback()
}

// walkHook runs a built-in chain and applies its policy to branches that
// fall off its end. A missing table or chain accepts.
func (t *tracer) walkHook(table, chain string, s state) []state {
	s.verdict = ""
	tbl := t.rs.Tables[table]
	if tbl == nil || tbl.Chains[chain] == nil {
		s.verdict = "ACCEPT"
		return []state{s}
	}
	var out []state
	for _, r := range t.runChain(tbl, chain, s, 0) {
		if r.verdict == "" || r.verdict == "RETURN" {
			policy := tbl.Chains[chain].Policy
			if policy == "" {
				policy = "ACCEPT"
			}
			r.path = append(r.path, Step{Table: table, Chain: chain, Text: "policy " + policy})
			r.verdict = policy
		}
		out = append(out, r)
	}
	return out
}

const maxDepth = 64

// maxBranches bounds the random choices followed: past it, random matches
// count as not matching (and the trace says so), so a pathological ruleset
// cannot make tracing exponential.
const maxBranches = 4096

// runChain walks one chain. Returned branches have verdict "" (fell off the
// end or returned) or a terminal verdict.
func (t *tracer) runChain(tbl *Table, chain string, s state, depth int) []state {
	c := tbl.Chains[chain]
	if c == nil {
		t.notes[fmt.Sprintf("jump to missing chain %s", chain)] = true
		return []state{s}
	}
	if depth > maxDepth {
		t.notes[fmt.Sprintf("jumps nested deeper than %d at %s (a loop?): not followed", maxDepth, chain)] = true
		return []state{s}
	}
	live := []state{s}
	var done []state
	for i, r := range c.Rules {
		var next []state
		for _, b := range live {
			yes, no := t.match(tbl.Name, r, b)
			if no != nil {
				next = append(next, *no)
			}
			if yes == nil {
				continue
			}
			m := *yes
			m.path = append(m.path, Step{Table: tbl.Name, Chain: chain, Rule: i + 1, Text: r.Text, Comment: r.Comment()})
			for _, res := range t.target(tbl, r, m, depth) {
				switch res.verdict {
				case "":
					next = append(next, res)
				case "RETURN":
					res.verdict = ""
					done = append(done, res)
				default:
					done = append(done, res)
				}
			}
		}
		live = next
		if len(live) == 0 {
			break
		}
	}
	return append(done, live...)
}

// target applies a matched rule's target.
func (t *tracer) target(tbl *Table, r *Rule, s state, depth int) []state {
	switch r.Target {
	case "":
		return []state{s}
	case "ACCEPT", "DROP":
		s.verdict = r.Target
		return []state{s}
	case "REJECT":
		s.verdict = "REJECT"
		return []state{s}
	case "RETURN":
		s.verdict = "RETURN"
		return []state{s}
	case "DNAT":
		if o := r.TargetOption("--to-destination"); o != nil && len(o.Values) > 0 {
			s.dnat = o.Values[0]
			if ap, err := netip.ParseAddrPort(o.Values[0]); err == nil {
				s.dst, s.dstPort = ap.Addr(), int(ap.Port())
			} else if a, err := netip.ParseAddr(o.Values[0]); err == nil {
				s.dst = a
			}
		}
		s.verdict = "ACCEPT"
		return []state{s}
	case "MASQUERADE":
		s.masq = true
		s.verdict = "ACCEPT"
		return []state{s}
	case "SNAT":
		if o := r.TargetOption("--to-source"); o != nil && len(o.Values) > 0 {
			s.snat = o.Values[0]
		}
		s.verdict = "ACCEPT"
		return []state{s}
	case "MARK":
		s.mark = applyMark(r, s.mark)
		return []state{s}
	case "LOG", "NFLOG", "CONNMARK", "TRACE", "AUDIT":
		return []state{s}
	}
	if _, ok := tbl.Chains[r.Target]; !ok {
		t.notes["target "+r.Target] = true
		return []state{s}
	}
	res := t.runChain(tbl, r.Target, s, depth+1)
	if r.Goto {
		for i := range res {
			if res[i].verdict == "" {
				res[i].verdict = "RETURN"
			}
		}
	}
	return res
}

func applyMark(r *Rule, mark uint32) uint32 {
	for _, o := range r.TargetArgs {
		if len(o.Values) == 0 {
			continue
		}
		v, m, _ := parseMark(o.Values[0])
		switch o.Name {
		case "--or-mark":
			mark |= v
		case "--xor-mark":
			mark ^= v
		case "--and-mark":
			mark &= v
		case "--set-mark":
			mark = mark&^m | v
		case "--set-xmark":
			mark = (mark &^ m) ^ v
		}
	}
	return mark
}

// parseMark parses "value[/mask]"; the mask defaults to all ones.
func parseMark(s string) (uint32, uint32, error) {
	val, mask, hasMask := strings.Cut(s, "/")
	v, err := strconv.ParseUint(val, 0, 32)
	if err != nil {
		return 0, 0, err
	}
	m := uint64(0xffffffff)
	if hasMask {
		if m, err = strconv.ParseUint(mask, 0, 32); err != nil {
			return 0, 0, err
		}
	}
	return uint32(v), uint32(m), nil
}
