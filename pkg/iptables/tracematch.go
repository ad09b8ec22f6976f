package iptables

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

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

// module evaluates one match module against the packet in its state.
func (t *tracer) module(m Match, s state, p Packet) matchResult {
	switch m.Module {
	case "comment", "nfacct":
		// nfacct only counts the packet into an accounting object.
		return matchYes
	case "tcp", "udp", "sctp":
		if strings.ToLower(p.Protocol) != m.Module {
			return matchNo
		}
		return portsMatch(m, s, p, false)
	case "multiport":
		return portsMatch(m, s, p, true)
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
		return t.addrtypeMatch(m, s, p)
	case "conntrack", "state":
		return conntrackMatch(m, s)
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

// portsMatch is the port options of a tcp/udp/sctp match (one port or
// range each: --dport) or of multiport (lists: --dports).
func portsMatch(m Match, s state, p Packet, multi bool) matchResult {
	for _, o := range m.Options {
		name, plural := strings.CutSuffix(o.Name, "s")
		if plural != multi {
			return matchUnknown
		}
		var port int
		switch name {
		case "--dport", "--destination-port":
			port = s.dstPort
		case "--sport", "--source-port":
			port = p.SrcPort
		default:
			return matchUnknown
		}
		var specs []string
		switch {
		case multi:
			specs = strings.Split(strings.Join(o.Values, ","), ",")
		case len(o.Values) == 0:
			return matchNo
		default:
			specs = o.Values[:1]
		}
		in := false
		for _, spec := range specs {
			if portIn(port, spec) {
				in = true
			}
		}
		if boolResult(in, o.Negated) == matchNo {
			return matchNo
		}
	}
	return matchYes
}

// addrtypeMatch is "-m addrtype --src-type/--dst-type LOCAL".
func (t *tracer) addrtypeMatch(m Match, s state, p Packet) matchResult {
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
}

// conntrackMatch is a connection-state match. The traced packet is the
// first of a new connection: state NEW, plus DNAT once a DNAT rule
// rewrote its destination.
func conntrackMatch(m Match, s state) matchResult {
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
