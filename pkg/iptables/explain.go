package iptables

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Summary says in words where a traced packet ends up, from the verdicts and
// the comments of the rules that decided them.
func (t *Trace) Summary() string {
	if len(t.Outcomes) == 0 {
		return "no outcome (empty ruleset)"
	}
	var lines []string
	var eps []string
	for _, o := range t.Outcomes {
		if o.DNAT != "" && o.Verdict == "ACCEPT" && !slices.Contains(eps, o.DNAT) {
			eps = append(eps, o.DNAT)
		}
	}
	sort.Strings(eps)
	if len(eps) > 0 {
		svc := serviceOf(t.Outcomes)
		choice := "always"
		if len(eps) > 1 {
			choice = fmt.Sprintf("one of %d, chosen at random", len(eps))
		}
		masq := t.masqueradeText()
		if svc != "" {
			lines = append(lines, fmt.Sprintf("accepted: %s -> %s (%s), %s", svc, strings.Join(eps, ", "), choice, masq))
		} else {
			lines = append(lines, fmt.Sprintf("accepted: DNAT to %s (%s), %s", strings.Join(eps, ", "), choice, masq))
		}
	}
	for _, o := range t.Outcomes {
		if o.DNAT != "" && o.Verdict == "ACCEPT" {
			continue
		}
		line := ""
		switch o.Verdict {
		case "REJECT", "DROP":
			word := map[string]string{"REJECT": "rejected", "DROP": "dropped"}[o.Verdict]
			last := lastRule(o)
			if o.DNAT != "" {
				word += " after DNAT to " + o.DNAT
			}
			if last.Rule == 0 {
				line = fmt.Sprintf("%s by the %s of %s %s", word, last.Text, last.Table, last.Chain)
			} else if c := last.Comment; c != "" {
				line = fmt.Sprintf("%s: %s (%s %s rule %d)", word, c, last.Table, last.Chain, last.Rule)
			} else {
				line = fmt.Sprintf("%s by %s %s rule %d: %s", word, last.Table, last.Chain, last.Rule, last.Text)
			}
		default:
			line = "not a Service address: no rule of ours rewrote it; it is delivered as addressed"
			if o.Masquerade {
				line += " (masqueraded)"
			}
		}
		if !slices.Contains(lines, line) {
			lines = append(lines, line)
		}
	}
	if len(t.Unevaluated) > 0 {
		lines = append(lines, "could not evaluate (treated as not matching): "+strings.Join(t.Unevaluated, "; "))
	}
	if len(t.Assumptions) > 0 {
		lines = append(lines, "assumed: "+strings.Join(t.Assumptions, "; "))
	}
	return strings.Join(lines, "\n")
}

func (t *Trace) masqueradeText() string {
	yes, no := 0, 0
	for _, o := range t.Outcomes {
		if o.DNAT == "" {
			continue
		}
		if o.Masquerade {
			yes++
		} else {
			no++
		}
	}
	switch {
	case yes > 0 && no == 0:
		return "masqueraded (the endpoint sees the node's address)"
	case no > 0 && yes == 0:
		return "not masqueraded (the endpoint sees the client's address)"
	}
	return "masqueraded on some paths"
}

// lastRule is the step that decided an outcome: the last rule or policy.
func lastRule(o Outcome) Step {
	if len(o.Path) > 0 {
		return o.Path[len(o.Path)-1]
	}
	return Step{}
}

// serviceOf finds the Service named by the comment of the dispatch rule.
func serviceOf(outcomes []Outcome) string {
	for _, o := range outcomes {
		for _, s := range o.Path {
			if c, ok := strings.CutSuffix(s.Comment, " cluster IP"); ok {
				return c
			}
		}
	}
	return ""
}

// Text prints the trace for operators: the summary, then each distinct path.
func (t *Trace) Text() string {
	var b strings.Builder
	b.WriteString(t.Summary())
	b.WriteString("\n")
	for i, o := range t.Outcomes {
		fmt.Fprintf(&b, "\npath %d: %s", i+1, o.Verdict)
		if o.DNAT != "" {
			fmt.Fprintf(&b, ", DNAT to %s", o.DNAT)
		}
		if o.Masquerade {
			b.WriteString(", masqueraded")
		}
		if o.Random {
			b.WriteString(" (random choice)")
		}
		b.WriteString("\n")
		for _, s := range o.Path {
			if s.Rule == 0 {
				fmt.Fprintf(&b, "  %-6s %-22s %s\n", s.Table, s.Chain, s.Text)
				continue
			}
			fmt.Fprintf(&b, "  %-6s %-22s #%-3d %s\n", s.Table, s.Chain, s.Rule, s.Text)
		}
	}
	return b.String()
}
