// Package iptables owns everything that executes iptables on the host
// (iptables-restore and iptables-save for both backends and both IP
// families, idempotent jump rules through github.com/coreos/go-iptables,
// backend detection), plus the pure parts built around its text format: the
// ruleset parser, an in-memory ruleset with iptables-restore semantics, and
// the packet tracer used by tests and by `switchyard explain`.
//
// It knows nothing about Services: callers hand it restore text and jump
// rules. It must not import the proxier or watch packages.
package iptables

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// Present reports whether the chains exist and every jump is in place: one
// call per chain asked for, and one listing per built-in chain.
//
// On legacy, a table whose summary is the one it had when last seen intact
// is not listed again (see verified): in a quiet node the check then costs
// a system call per table instead of loading the whole table per chain.
func (r *Runner) Present(ctx context.Context, chains map[string][]string, jumps []Jump) (bool, error) {
	var tables []string
	for t := range chains {
		tables = append(tables, t)
	}
	for _, j := range jumps {
		if !slices.Contains(tables, j.Table) {
			tables = append(tables, j.Table)
		}
	}
	quick, before := r.quickCheck(tables)
	if quick {
		return true, nil
	}
	ok, err := r.present(chains, jumps)
	if ok && err == nil && before != nil {
		r.mu.Lock()
		r.verified = before
		r.mu.Unlock()
	}
	return ok, err
}

// quickCheck says whether every table still has its verified summary. If
// not, it returns the summaries read now (nil off legacy or when one could
// not be read), to be recorded should the listings that follow pass: read
// before them, so a change made meanwhile shows up next time.
func (r *Runner) quickCheck(tables []string) (bool, map[string]tableSummary) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.backend != BackendLegacy {
		r.fullChecks++ // nf_tables lists one chain without loading the rest
		return false, nil
	}
	r.checks++
	now := map[string]tableSummary{}
	same := r.checks%fullCheckEvery != 0
	for _, t := range tables {
		s, err := legacySummary(r.family, t)
		if err != nil {
			r.fullChecks++
			return false, nil
		}
		now[t] = s
		if v, ok := r.verified[t]; !ok || v != s {
			same = false
		}
	}
	if same {
		r.quickChecks++
		return true, nil
	}
	r.fullChecks++
	return false, now
}

// carryVerified, called with mu held before a restore of ours, returns
// what to run after it: each verified table that had not changed since it
// was verified stays verified with its new summary (what changed is our own
// doing); any other forgets its summary, so the next check lists it.
func (r *Runner) carryVerified() func() {
	if len(r.verified) == 0 {
		return func() {}
	}
	var unchanged []string
	for t, v := range r.verified {
		if s, err := legacySummary(r.family, t); err == nil && s == v {
			unchanged = append(unchanged, t)
		}
	}
	return func() {
		carried := map[string]tableSummary{}
		for _, t := range unchanged {
			if s, err := legacySummary(r.family, t); err == nil {
				carried[t] = s
			}
		}
		r.verified = carried
	}
}

// Checks returns how many integrity checks listed the chains and how many
// the legacy table summaries answered without listing.
func (r *Runner) Checks() (full, quick int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fullChecks, r.quickChecks
}

func (r *Runner) present(chains map[string][]string, jumps []Jump) (bool, error) {
	for table, names := range chains {
		for _, c := range names {
			ok, err := r.ipt.ChainExists(table, c)
			if err != nil {
				return false, wrapBusy(err)
			}
			if !ok {
				return false, nil
			}
		}
	}
	for _, g := range groupJumps(jumps) {
		have, err := r.listChain(g.table, g.chain)
		if err != nil {
			return false, fmt.Errorf("listing %s/%s: %w", g.table, g.chain, wrapBusy(err))
		}
		for _, j := range g.jumps {
			if !HasSavedJump(have, j) {
				return false, nil
			}
		}
	}
	return true, nil
}

// listChain returns the jumps of one chain as iptables -S prints them (the
// same lines as iptables-save). It does not take mu (see there).
func (r *Runner) listChain(table, chain string) ([]SavedJump, error) {
	lines, err := r.ipt.List(table, chain)
	if err != nil {
		return nil, err
	}
	_, jumps := ScanSave([]byte(strings.Join(lines, "\n")))
	return jumps, nil
}

type jumpGroup struct {
	table, chain string
	jumps        []Jump
}

// groupJumps groups jumps by their built-in chain, keeping the order of
// first appearance and, within a chain, the given order.
func groupJumps(jumps []Jump) []jumpGroup {
	var groups []jumpGroup
	for _, j := range jumps {
		i := slices.IndexFunc(groups, func(g jumpGroup) bool { return g.table == j.Table && g.chain == j.Chain })
		if i < 0 {
			groups = append(groups, jumpGroup{table: j.Table, chain: j.Chain})
			i = len(groups) - 1
		}
		groups[i].jumps = append(groups[i].jumps, j)
	}
	return groups
}
