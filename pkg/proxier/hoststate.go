package proxier

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
)

// DefaultHostTimeout is how long one host call may take. A full restore of
// 10,000 Services can take tens of seconds on nf_tables.
const DefaultHostTimeout = 5 * time.Minute

func (s *Syncer) hostCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	d := s.HostTimeout
	if d <= 0 {
		d = DefaultHostTimeout
	}
	return context.WithTimeout(ctx, d)
}

// hostState reads the host's tables: every chain, the rules in each, the
// SWY- chains that exist but are not wanted, and the rules in other chains
// that jump to them (they must go before the chains can be deleted).
func (s *Syncer) hostState(ctx context.Context, rules *Rules) (hostTables, error) {
	h := hostTables{existing: map[string]map[string]bool{}, size: map[string]map[string]int{},
		stale: map[string][]string{}, unjump: map[string][]string{}, jump: map[string][]string{}}
	for _, t := range rules.Tables {
		hctx, cancel := s.hostCtx(ctx)
		out, err := s.Host.Save(hctx, t.Name)
		cancel()
		if err != nil {
			return h, fmt.Errorf("reading %s table: %w", t.Name, err)
		}
		want := map[string]bool{}
		for _, c := range t.Chains {
			want[c.Name] = true
		}
		existing, jumps := iptables.ScanSave(out)
		h.existing[t.Name], h.size[t.Name] = map[string]bool{}, map[string]int{}
		for _, c := range existing {
			h.existing[t.Name][c] = true
			if strings.HasPrefix(c, ChainPrefix) && !want[c] {
				h.stale[t.Name] = append(h.stale[t.Name], c)
			}
		}
		for _, j := range jumps {
			h.size[t.Name][j.Chain]++
			if !strings.HasPrefix(j.Chain, ChainPrefix) && strings.HasPrefix(j.Target, ChainPrefix) && !want[j.Target] {
				h.unjump[t.Name] = append(h.unjump[t.Name], "-D "+j.Chain+" "+j.Rule)
			}
		}
		// Missing jumps, inserted last-first at the top of their chain so
		// they end up in the given order.
		for i := len(rules.Jumps) - 1; i >= 0; i-- {
			j := rules.Jumps[i]
			if j.Table == t.Name && !iptables.HasSavedJump(jumps, j) {
				h.jump[t.Name] = append(h.jump[t.Name], "-I "+j.Chain+" 1 "+iptables.ArgsText(j.Args()))
			}
		}
	}
	return h, nil
}

// Check reports whether the rules of the last sync are still on the host:
// the canary chains exist and the jumps are in place. When they are not,
// the next sync is made full.
func (s *Syncer) Check(ctx context.Context) (bool, error) {
	s.mu.Lock()
	rules, lastFull := s.rules, s.lastFull
	s.mu.Unlock()
	if rules == nil {
		return false, nil
	}
	// The canaries and the jumps are enough: a flushed or rewritten table
	// loses its canary, and a top-level chain cannot go while something
	// jumps to it. On legacy every iptables call loads the whole table
	// (about half a second at 10,000 Services), so the check asks for one
	// chain per table and lists each built-in chain once: 8 calls.
	ok, err := s.Host.Present(ctx, canaries(), rules.Jumps)
	if errors.Is(err, iptables.ErrLockBusy) {
		// Another program held the lock longer than we wait: nothing was
		// seen, so nothing is repaired. The next check looks again.
		return false, err
	}
	if err != nil || !ok {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.lastFull.Equal(lastFull) {
			// The check ran beside a full sync, which wrote everything
			// afresh: what it saw missing may have been mid-repair. The
			// next check looks again.
			return true, nil
		}
		s.applied = nil
	}
	return ok, err
}

// canaries are the chains Check looks for, per table.
func canaries() map[string][]string {
	return map[string][]string{TableNAT: {ChainCanary}, TableFilter: {ChainCanary}}
}

// jumpsKnownGood is true when the jumps were ensured by an earlier sync and
// have not changed since; the periodic check catches anyone removing them.
func (s *Syncer) jumpsKnownGood(rules *Rules) bool {
	return s.rules != nil && slices.EqualFunc(s.rules.Jumps, rules.Jumps, func(a, b iptables.Jump) bool {
		return a.Table == b.Table && a.Chain == b.Chain && a.Target == b.Target && a.Comment == b.Comment && slices.Equal(a.Extra, b.Extra)
	})
}
