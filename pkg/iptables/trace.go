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

// match decides whether a rule's matches apply to the branch. It returns the
// branch that matched and the branch that did not; a random match returns
// both, anything deterministic returns one of them.
func (t *tracer) match(table string, r *Rule, s state) (*state, *state) {
	p := t.in.Packet
	for _, g := range r.Generic {
		ok, known := t.generic(g, s)
		if !known {
			t.notes[fmt.Sprintf("%s %s", g.Name, strings.Join(g.Values, " "))] = true
			return nil, &s
		}
		if ok == g.Negated {
			return nil, &s
		}
	}
	forked := false
	for _, m := range r.Matches {
		res := t.module(m, s, p)
		switch res {
		case matchNo:
			return nil, &s
		case matchUnknown:
			t.notes["-m "+m.Module+" "+optionsText(m.Options)] = true
			return nil, &s
		case matchRandom:
			forked = true
		}
	}
	if forked && t.forks >= maxBranches {
		t.notes[fmt.Sprintf("more than %d random paths: the rest were not followed", maxBranches)] = true
		return nil, &s
	}
	if forked {
		t.forks++
		yes, no := s.fork(), s.fork()
		yes.random, no.random = true, true
		return &yes, &no
	}
	return &s, nil
}

func optionsText(opts []Option) string {
	var parts []string
	for _, o := range opts {
		if o.Negated {
			parts = append(parts, "!")
		}
		parts = append(parts, o.Name)
		parts = append(parts, o.Values...)
	}
	return strings.Join(parts, " ")
}

func (t *tracer) generic(g Option, s state) (ok, known bool) {
	p := t.in.Packet
	if len(g.Values) == 0 {
		return false, g.Name == "-f" // a new connection's first packet is no fragment
	}
	v := g.Values[0]
	switch g.Name {
	case "-s":
		return addrIn(p.Src, v)
	case "-d":
		return addrIn(s.dst, v)
	case "-p":
		v = strings.ToLower(v)
		return v == "all" || v == "0" || v == strings.ToLower(p.Protocol), true
	case "-i":
		if t.trace.Local {
			return false, true // locally generated: no input interface
		}
		if p.InIface == "" {
			return false, false
		}
		return ifaceMatch(p.InIface, v), true
	case "-o":
		if p.OutIface == "" {
			return false, false
		}
		return ifaceMatch(p.OutIface, v), true
	}
	return false, false
}

func ifaceMatch(iface, pattern string) bool {
	if strings.HasSuffix(pattern, "+") {
		return strings.HasPrefix(iface, strings.TrimSuffix(pattern, "+"))
	}
	return iface == pattern
}

func addrIn(a netip.Addr, spec string) (bool, bool) {
	a = a.Unmap()
	if p, err := netip.ParsePrefix(spec); err == nil {
		return p.Contains(a), true
	}
	if b, err := netip.ParseAddr(spec); err == nil {
		return a == b.Unmap(), true
	}
	return false, false
}

type matchResult int

const (
	matchYes matchResult = iota
	matchNo
	matchUnknown
	matchRandom
)

func boolResult(ok, negated bool) matchResult {
	if ok != negated {
		return matchYes
	}
	return matchNo
}

func (t *tracer) module(m Match, s state, p Packet) matchResult {
	switch m.Module {
	case "comment", "nfacct":
		// nfacct only counts the packet into an accounting object.
		return matchYes
	case "tcp", "udp", "sctp":
		if strings.ToLower(p.Protocol) != m.Module {
			return matchNo
		}
		for _, o := range m.Options {
			var port int
			switch o.Name {
			case "--dport", "--destination-port":
				port = s.dstPort
			case "--sport", "--source-port":
				port = p.SrcPort
			default:
				return matchUnknown
			}
			if len(o.Values) == 0 || boolResult(portIn(port, o.Values[0]), o.Negated) == matchNo {
				return matchNo
			}
		}
		return matchYes
	case "multiport":
		for _, o := range m.Options {
			var port int
			switch o.Name {
			case "--dports", "--destination-ports":
				port = s.dstPort
			case "--sports", "--source-ports":
				port = p.SrcPort
			default:
				return matchUnknown
			}
			in := false
			for _, spec := range strings.Split(strings.Join(o.Values, ","), ",") {
				if portIn(port, spec) {
					in = true
				}
			}
			if boolResult(in, o.Negated) == matchNo {
				return matchNo
			}
		}
		return matchYes
	case "mark":
		o := m.Option("--mark")
		if o == nil || len(o.Values) == 0 {
			return matchUnknown
		}
		v, mask, err := parseMark(o.Values[0])
		if err != nil {
			return matchUnknown
		}
		return boolResult(s.mark&mask == v, o.Negated)
	case "addrtype":
		for _, o := range m.Options {
			if len(o.Values) == 0 {
				return matchUnknown
			}
			var a netip.Addr
			switch o.Name {
			case "--dst-type":
				a = s.dst
			case "--src-type":
				a = p.Src
			default:
				return matchUnknown
			}
			if o.Values[0] != "LOCAL" {
				return matchUnknown
			}
			if boolResult(t.isLocal(a), o.Negated) == matchNo {
				return matchNo
			}
		}
		return matchYes
	case "conntrack", "state":
		// The first packet of a new connection: state NEW, plus DNAT once a
		// DNAT rule rewrote its destination.
		for _, o := range m.Options {
			if (o.Name != "--ctstate" && o.Name != "--state") || len(o.Values) == 0 {
				return matchUnknown
			}
			in := false
			for _, st := range strings.Split(o.Values[0], ",") {
				if st == "NEW" || st == "DNAT" && s.dnat != "" {
					in = true
				}
			}
			if boolResult(in, o.Negated) == matchNo {
				return matchNo
			}
		}
		return matchYes
	case "statistic":
		return matchRandom
	case "recent":
		if m.Option("--set") != nil {
			return matchYes
		}
		if m.Option("--rcheck") != nil || m.Option("--update") != nil {
			name := ""
			if o := m.Option("--name"); o != nil && len(o.Values) > 0 {
				name = o.Values[0]
			}
			t.notes["assume:no earlier session-affinity entry ("+name+")"] = true
			return matchNo
		}
		return matchUnknown
	}
	return matchUnknown
}

// portIn reports whether port is in "N" or "N:M".
func portIn(port int, spec string) bool {
	lo, hi, isRange := strings.Cut(spec, ":")
	a, err := strconv.Atoi(lo)
	if err != nil {
		return false
	}
	if !isRange {
		return port == a
	}
	b, err := strconv.Atoi(hi)
	if err != nil {
		return false
	}
	return port >= a && port <= b
}
