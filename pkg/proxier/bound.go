package proxier

import (
	"net/netip"
	"sort"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
)

// Bounded syncs. A restore's cost grows with what it writes: on nf_tables a
// restore of 300,000 rules takes minutes, and nothing else reaches the node
// meanwhile. So when a partial sync has more to do than MaxRestoreRules, it
// applies an intermediate state instead: the Service ports already applied,
// with as many of the changed ones moved to their new state as fit. Every
// Service port is then wholly old or wholly new on the node, and the loop
// syncs again at once for the rest, picking up any newer change first.
//
// Which changes go first: updates of Service ports already programmed (an
// endpoint change: the most urgent, and the smallest), then new Service
// ports, then deletions (a deleted Service's rules only cost memory until
// they go), each in name order.

// DefaultMaxRestoreRulesNFT bounds restores on nf_tables, where a restore
// costs in proportion to what it writes (see the README's measurements).
const DefaultMaxRestoreRulesNFT = 4000

// MaxRestoreRulesFor is the default bound for a backend. On legacy every
// restore rewrites the whole table whatever it changes, so splitting only
// multiplies that cost: no bound.
func MaxRestoreRulesFor(b iptables.Backend) int {
	if b == iptables.BackendNFT {
		return DefaultMaxRestoreRulesNFT
	}
	return 0
}

// change classes, in the order they are applied.
const (
	changeUpdate = iota
	changeAdd
	changeDelete
)

type pendingChange struct {
	name  ServicePortName
	class int
	cost  int
}

// portCost is what writing or deleting a Service port's rules costs, as
// rendered in rules (zero when it is not there).
func portCost(rules *Rules, name ServicePortName) int {
	if pr := rules.port(name); pr != nil {
		return pr.cost()
	}
	return 0
}

// boundedTarget returns the snapshot to apply next, given what was applied
// (prev, rendered as prevRules) and what is wanted (next, rendered as
// nextRules), and how many changed Service ports it leaves for later
// syncs. With no bound, no earlier state, or a change of anything every
// port's rules depend on (the render's key: the node's own facts, the
// host's addresses, the large-cluster form, which follows the endpoint
// count), it is next itself: such a change touches every Service port, and
// stepping through it would not converge, because a port already moved is
// rendered under the old key in the intermediate state and under the new
// one in the wanted state, so it stays "changed" and takes its share of
// every later step's bound (a namespace's EndpointSlices deleted at once
// stalled a 10,000-Service node that way for a minute).
func boundedTarget(prev, next *Snapshot, prevRules, nextRules *Rules, maxRules int) (*Snapshot, int) {
	if maxRules <= 0 || prev == nil || prevRules.key != nextRules.key {
		return next, 0
	}
	changes, total := pendingChanges(prevRules, nextRules)
	if total <= maxRules {
		return next, 0
	}
	sort.Slice(changes, func(i, j int) bool {
		if changes[i].class != changes[j].class {
			return changes[i].class < changes[j].class
		}
		return lessName(changes[i].name, changes[j].name)
	})
	out := &Snapshot{
		Services:     make(map[ServicePortName]*ServicePort, len(prev.Services)),
		Endpoints:    make(map[ServicePortName][]Endpoint, len(prev.Endpoints)),
		Node:         next.Node,
		HostAddrs:    next.HostAddrs,
		TriggerTimes: next.TriggerTimes,
	}
	for n, s := range prev.Services {
		out.Services[n] = s
	}
	for n, e := range prev.Endpoints {
		out.Endpoints[n] = e
	}
	// A deleted Service's address may already belong to a new one: the
	// deletion then goes with the addition, so the old rules never shadow
	// the new ones.
	deletedAt := map[netip.Addr][]ServicePortName{}
	for _, c := range changes {
		if c.class == changeDelete {
			for _, a := range prev.Services[c.name].ClusterIPs {
				deletedAt[a] = append(deletedAt[a], c.name)
			}
		}
	}
	done := map[ServicePortName]bool{}
	used, taken := 0, 0
	apply := func(c pendingChange) {
		done[c.name] = true
		used += c.cost
		taken++
		if svc, ok := next.Services[c.name]; ok {
			out.Services[c.name] = svc
			if eps, ok := next.Endpoints[c.name]; ok {
				out.Endpoints[c.name] = eps
			} else {
				delete(out.Endpoints, c.name)
			}
		} else {
			delete(out.Services, c.name)
			delete(out.Endpoints, c.name)
		}
	}
	for _, c := range changes {
		if done[c.name] {
			continue
		}
		// Always make progress, even past the bound, by one change.
		if taken > 0 && used+c.cost > maxRules {
			break
		}
		apply(c)
		if svc := next.Services[c.name]; svc != nil {
			for _, a := range svc.ClusterIPs {
				for _, d := range deletedAt[a] {
					if !done[d] {
						apply(pendingChange{name: d, class: changeDelete, cost: portCost(prevRules, d)})
					}
				}
			}
		}
	}
	return out, len(changes) - taken
}

// pendingChanges lists the Service ports that differ between the applied
// rules and the wanted ones, with their costs, and the total cost. A port
// whose render the Renderer reused is unchanged (it reuses a render only for
// the very same objects), so this walks the two sorted name lists comparing
// pointers: no map lookup per port, which at 10,000 ports cost more than
// the rest of a one-change sync's Go side.
func pendingChanges(prevRules, nextRules *Rules) ([]pendingChange, int) {
	var changes []pendingChange
	total := 0
	add := func(name ServicePortName, class int, cost int) {
		changes = append(changes, pendingChange{name: name, class: class, cost: cost})
		total += cost
	}
	prev, next := prevRules.names, nextRules.names
	same := sameSlice(prev, next)
	i, j := 0, 0
	for i < len(next) || j < len(prev) {
		switch {
		case same || i < len(next) && j < len(prev) && next[i] == prev[j]:
			if np, pp := nextRules.ports[i], prevRules.ports[j]; np != pp {
				add(next[i], changeUpdate, np.cost()+pp.cost())
			}
			i++
			j++
		case j == len(prev) || i < len(next) && lessName(next[i], prev[j]):
			add(next[i], changeAdd, nextRules.ports[i].cost())
			i++
		default:
			add(prev[j], changeDelete, prevRules.ports[j].cost())
			j++
		}
	}
	return changes, total
}
