package proxier

import (
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/pkg/metrics"
)

// SyncResult describes one sync, for logs and metrics.
type SyncResult struct {
	Full          bool
	Quarantined   int
	ChainsWritten int
	ChainsDeleted int
	// Pending is how many changed Service ports this sync left for the
	// next one, to keep its restore within MaxRestoreRules.
	Pending int
	// Restores is how many iptables-restore runs the sync took.
	Restores int
	Bytes    int
	Elapsed  time.Duration
	// Phases is where Elapsed went.
	Phases Phases
}

// Phases is the time one family's sync spent in each step: rendering,
// reading the host's tables (full syncs), writing the restore text (the
// diff; for a streamed full restore it is part of Restore), the
// iptables-restore runs, ensuring the jump rules, and the conntrack
// clean-up. Queue is how long the oldest change waited for the sync to
// start (set by the sync loop).
type Phases struct {
	Queue, Render, HostState, Diff, Restore, Jumps, Conntrack time.Duration
}

// observe publishes the phases' durations.
func (p Phases) observe(family string) {
	for _, ph := range []struct {
		name string
		d    time.Duration
	}{{"queue", p.Queue}, {"render", p.Render}, {"host_state", p.HostState}, {"diff", p.Diff},
		{"restore", p.Restore}, {"jumps", p.Jumps}, {"conntrack", p.Conntrack}} {
		metrics.SyncPhaseDuration.WithLabelValues(family, ph.name).Observe(ph.d.Seconds())
	}
}

// recordSync publishes one successful sync's figures.
func recordSync(family v1.IPFamily, rules *Rules, res SyncResult, written map[string]int) {
	fam := string(family)
	secs := res.Elapsed.Seconds()
	metrics.SyncDuration.WithLabelValues(fam).Observe(secs)
	kind := "noop"
	switch {
	case res.Full:
		kind = "full"
		metrics.SyncFullDuration.WithLabelValues(fam).Observe(secs)
	default:
		metrics.SyncPartialDuration.WithLabelValues(fam).Observe(secs)
		if res.Bytes > 0 {
			kind = "partial"
		}
	}
	metrics.Syncs.WithLabelValues(kind, fam).Inc()
	metrics.SyncLastTimestamp.WithLabelValues(fam).SetToCurrentTime()
	if res.Bytes > 0 {
		metrics.RestoreBytes.WithLabelValues(fam).Observe(float64(res.Bytes))
	}
	metrics.ChainsWritten.WithLabelValues(fam).Add(float64(res.ChainsWritten))
	metrics.ChainsDeleted.WithLabelValues(fam).Add(float64(res.ChainsDeleted))

	counts := rules.counts
	for _, t := range rules.Tables {
		total := 0
		for l, level := range ruleLevels {
			n := counts[tableIndex(t.Name)][l]
			total += n
			metrics.RulesByLevel.WithLabelValues(t.Name, level, fam).Set(float64(n))
		}
		metrics.RulesTotal.WithLabelValues(t.Name, fam).Set(float64(total))
		metrics.RulesLast.WithLabelValues(t.Name, fam).Set(float64(written[t.Name]))
	}
	metrics.NoLocalEndpoints.WithLabelValues("internal", fam).Set(float64(rules.Stats.NoLocalInternal))
	metrics.NoLocalEndpoints.WithLabelValues("external", fam).Set(float64(rules.Stats.NoLocalExternal))
}
