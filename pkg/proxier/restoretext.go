package proxier

import (
	"bytes"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
)

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

// partialRestore writes only chains whose content differs from what was
// applied, and deletes chains no longer wanted. A table with nothing to do
// is left out; with nothing to do at all the text is empty. Service ports
// whose rendered output is the very same as last time are not looked at,
// so the work is proportional to what changed (plus the dispatch chains).
//
// A chain that only lost rules (a dispatch leaf when a Service goes) has
// them deleted one by one ("-D") instead of being written again: on
// nf_tables a transaction that adds any rule makes the kernel re-validate
// everything the base chains reach (0.1 s at 10,000 Services, 0.4 s at
// 30,000), and one that only deletes and flushes does not.
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
		var deletes, inserts []string
		var rewrite []Chain
		for _, c := range changed {
			if removed := removedOnly(c.old, c.Rules); len(removed) > 0 {
				for _, rule := range removed {
					deletes = append(deletes, "-D "+c.Name+" "+rule)
				}
				continue
			}
			if IsDispatchChain(c.Name) {
				if added := insertedOnly(c.old, c.Rules); len(added) > 0 {
					for _, in := range added {
						inserts = append(inserts, "-I "+c.Name+" "+strconv.Itoa(in.pos)+" "+in.rule)
					}
					continue
				}
			}
			rewrite = append(rewrite, c.Chain)
			w.DeclareChain(c.Name)
		}
		// Flush removed chains first: one may still jump to another.
		for _, name := range gone {
			w.DeclareChain(name)
		}
		// Deletions before the chains go: a deleted rule may jump to one.
		for _, line := range deletes {
			w.Line(line)
		}
		for _, c := range rewrite {
			w.Rules(c.Name, c.Rules)
		}
		// Insertions after the chains they may jump to are written.
		for _, line := range inserts {
			w.Line(line)
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

// insertion is a rule to insert and its place (from 1) in the final chain.
type insertion struct {
	pos  int
	rule string
}

// insertedOnly returns the rules next adds to old, each with its place in
// next, when next is old with rules added (old in the same order) and old
// keeps at least one rule; else nil. Inserted in that order, each at its
// place, they turn old into next: when a rule goes in, every rule before
// its place is already where next has it. A dispatch leaf that gains a
// Service is then one "-I" rather than the leaf written again: during a
// load, when one sync adds some sixty Services to as many leaves of
// about forty rules at 10,000 Services, that restore takes 0.17 s instead
// of 0.37 s.
func insertedOnly(old, next []string) []insertion {
	if len(old) == 0 || len(next) <= len(old) {
		return nil
	}
	extra, ok := beyond(old, next)
	if !ok {
		return nil
	}
	added := make([]insertion, len(extra))
	for k, i := range extra {
		added[k] = insertion{pos: i + 1, rule: next[i]}
	}
	return added
}

// removedOnly returns the rules of old that next lacks, when next is old
// with some rules taken out (in the same order), next keeps at least one
// rule, and each rule taken out is there once in old (so deleting it by its
// text deletes that one); else nil.
func removedOnly(old, next []string) []string {
	if len(next) == 0 || len(next) >= len(old) {
		return nil
	}
	extra, ok := beyond(next, old)
	if !ok {
		return nil
	}
	count := make(map[string]int, len(old))
	for _, rule := range old {
		count[rule]++
	}
	removed := make([]string, len(extra))
	for k, i := range extra {
		if count[old[i]] > 1 {
			return nil
		}
		removed[k] = old[i]
	}
	return removed
}

// beyond returns the places in long of the rules that are not short's, when
// short is long with those taken out (its rules in the same order).
func beyond(short, long []string) ([]int, bool) {
	var extra []int
	j := 0
	for i, rule := range long {
		if j < len(short) && short[j] == rule {
			j++
			continue
		}
		extra = append(extra, i)
	}
	return extra, j == len(short)
}

// chainChange is a chain whose content differs from what was applied: its
// new content, and the old one (nil for a new chain).
type chainChange struct {
	Chain
	old []string
}

// diffTable returns the chains of one table that are new or differ from
// last, and the names of the chains last had that r has not.
func diffTable(r, last *Rules, t Table) (changed []chainChange, gone []string) {
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

func diffChains(prev, next []Chain) (changed []chainChange, gone []string) {
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

func diffChainMaps(prev, next map[string][]string) (changed []chainChange, gone []string) {
	for name, rules := range next {
		old, ok := prev[name]
		if !ok || !sameSlice(old, rules) && !slices.Equal(old, rules) {
			changed = append(changed, chainChange{Chain: Chain{Name: name, Rules: rules}, old: old})
		}
	}
	for name := range prev {
		if _, ok := next[name]; !ok {
			gone = append(gone, name)
		}
	}
	return changed, gone
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
		case bytes.HasPrefix(line, []byte("-A ")), bytes.HasPrefix(line, []byte("-I ")):
			written[table]++
		}
	}
}

// RestoreText renders complete rules as iptables-restore input for a fresh
// network namespace: every chain declared and filled, and the jumps from the
// built-in chains inserted. Built-in chains are never declared, so their
// policies are untouched.
func RestoreText(r *Rules) string {
	var b strings.Builder
	w := iptables.NewRestoreWriter(&b)
	for _, t := range r.Tables {
		w.Table(t.Name)
		for _, c := range t.Chains {
			w.DeclareChain(c.Name)
		}
		for _, c := range t.Chains {
			w.Rules(c.Name, c.Rules)
		}
		var jumps []iptables.Jump
		for _, j := range r.Jumps {
			if j.Table == t.Name {
				jumps = append(jumps, j)
			}
		}
		// Insert in reverse so the final order matches BaseJumps.
		for i := len(jumps) - 1; i >= 0; i-- {
			w.Line("-I " + jumps[i].Chain + " 1 " + ruleBuilder(jumps[i].Args()).String())
		}
		w.Commit()
	}
	return b.String()
}
