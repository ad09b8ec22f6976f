package proxier

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"

	v1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
)

// Chain is one chain's complete content: rule arguments without the leading
// "-A NAME".
type Chain struct {
	Name  string
	Rules []string
}

// Table is the chains switchyard owns in one table, in a stable order.
type Table struct {
	Name   string
	Chains []Chain
}

// Rules is a rendered ruleset for one IP family.
type Rules struct {
	Tables []Table
	Jumps  []iptables.Jump
	Stats  RenderStats
	// What the Renderer made them from, so the next sync compares only the
	// Service ports whose output is not the very same: each port's own
	// chains, and per table the chains not owned by a port (top-level and
	// dispatch). key is everything besides the ports the render depended on.
	key    string
	names  []ServicePortName
	ports  []*portRender // aligned with names
	shared map[string]map[string][]string
	// counts are the rules per table and level, for the metrics.
	counts ruleCounts
	// dispatch lists each table's dispatch node chains children first.
	dispatch map[string][]string
}

// RenderStats are figures the renderer notices on the way, for metrics.
type RenderStats struct {
	// Services with a Local traffic policy and no local endpoints.
	NoLocalInternal, NoLocalExternal int
}

// Table returns the table with the given name, or nil.
func (r *Rules) Table(name string) *Table {
	for i := range r.Tables {
		if r.Tables[i].Name == name {
			return &r.Tables[i]
		}
	}
	return nil
}

// Render turns a snapshot into the complete ruleset for one IP family. It is
// a pure function: the same snapshot and config always give the same rules.
func Render(snap *Snapshot, cfg RenderConfig) *Rules {
	return new(Renderer).Render(snap, cfg)
}

// Renderer renders like Render, but remembers each Service port's rendered
// chains and reuses them while the port's Service and endpoints are the
// same objects (the tracker shares unchanged values between snapshots) and
// the config and Node are unchanged. A sync then renders only what changed.
// The zero value is ready; a Renderer is not safe for concurrent use.
type Renderer struct {
	key   string
	names []ServicePortName // the last render's, sorted
	ports []*portRender     // aligned with names
	// shared is the last render's top-level chains and dispatch trees.
	shared *sharedRender
}

// portRender is one Service port's rendered output and the inputs it came from.
type portRender struct {
	svc *ServicePort
	eps []Endpoint
	// Its own chains per table, by name.
	nat, filter []Chain
	// Its rules in the dispatch lists (a list, not a map per table: a
	// port has one to a handful, and 10,000 small maps weigh 5 MB).
	keys  []rootedRule
	stats RenderStats
	// familyEndpoints counts eps of the rendered family; rules counts the
	// rules of its own chains per table and level, for the metrics.
	familyEndpoints int
	rules           ruleCounts
}

// rootedRule is one rule of a dispatch list: the list's root chain and table.
type rootedRule struct {
	nat  bool
	root string
	rule keyedRule
}

// rootedRules flattens an output's dispatch lists, in a stable order.
func rootedRules(o *output) []rootedRule {
	var out []rootedRule
	for _, k := range []struct {
		nat  bool
		keys map[string][]keyedRule
	}{{true, o.natKeys}, {false, o.filterKeys}} {
		for _, root := range slices.Sorted(maps.Keys(k.keys)) {
			for _, r := range k.keys[root] {
				out = append(out, rootedRule{nat: k.nat, root: root, rule: r})
			}
		}
	}
	return out
}

// ruleCounts are rules per table (filter, nat) and level (ruleLevels).
type ruleCounts [2][3]int

var ruleLevels = [3]string{"top", "service", "endpoint"}

func tableIndex(table string) int {
	if table == TableNAT {
		return 1
	}
	return 0
}

func (c *ruleCounts) addChains(table string, chains []Chain) {
	t := tableIndex(table)
	for _, ch := range chains {
		c[t][slices.Index(ruleLevels[:], chainLevel(ch.Name))] += len(ch.Rules)
	}
}

func (c *ruleCounts) add(o ruleCounts) {
	for t := range c {
		for l := range c[t] {
			c[t][l] += o[t][l]
		}
	}
}

func renderPort(snap *Snapshot, cfg RenderConfig, svc *ServicePort, eps []Endpoint, familyEndpoints int) *portRender {
	out := newOutput()
	for _, e := range renderServicePort(out, snap, cfg, svc) {
		out.natKeyed(ChainServices, addrKeyed(e.addr, destMatch(e.addr, e.proto, e.port, e.comment).add("-j", e.target)))
	}
	pr := &portRender{svc: svc, eps: eps, nat: sortedChains(out.nat), filter: sortedChains(out.filter),
		keys: rootedRules(out), stats: out.stats,
		familyEndpoints: familyEndpoints}
	pr.rules.addChains(TableNAT, pr.nat)
	pr.rules.addChains(TableFilter, pr.filter)
	return pr
}

// countFamily counts the endpoints of one family.
func countFamily(eps []Endpoint, family v1.IPFamily) int {
	n := 0
	for _, ep := range eps {
		if familyOf(ep.Addr) == family {
			n++
		}
	}
	return n
}

// nodeKey identifies everything about the Node that rules depend on.
func nodeKey(n NodeInfo) string { return fmt.Sprintf("%+v", n) }

// sameSlice reports whether two slices are the same slice (not merely equal).
func sameSlice[T any](a, b []T) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// Render renders snap, reusing the chains of unchanged Service ports from
// the last render and from also (other renders by this Renderer).
func (r *Renderer) Render(snap *Snapshot, cfg RenderConfig, also ...*Rules) *Rules {
	names := snap.SortedNames()
	ports, endpoints := r.reusable(snap, names, cfg.Family)
	cfg.largeCluster = endpoints > LargeClusterEndpoints
	// What every Service port's rules depend on besides its own objects.
	// (The host's addresses decide which endpoints are certainly remote.)
	key := fmt.Sprintf("%+v|%v|", cfg, snap.HostAddrs) + nodeKey(snap.Node)
	if key != r.key {
		clear(ports)
	}
	for _, other := range also {
		if other != nil && other.key == key {
			reuseFrom(ports, names, snap, other)
		}
	}
	var counts ruleCounts
	var stats RenderStats
	for i, pr := range ports {
		if pr == nil {
			eps := snap.Endpoints[names[i]]
			pr = renderPort(snap, cfg, snap.Services[names[i]], eps, countFamily(eps, cfg.Family))
			ports[i] = pr
		}
		counts.add(pr.rules)
		stats.NoLocalInternal += pr.stats.NoLocalInternal
		stats.NoLocalExternal += pr.stats.NoLocalExternal
	}
	sh := r.shared
	if sh == nil || r.key != key || !sameDispatch(names, ports, r.names, r.ports) {
		sh = renderShared(snap, cfg, ports)
	}
	r.key, r.names, r.ports, r.shared = key, names, ports, sh
	counts.add(sh.counts)

	// Each table: the top-level chains, the dispatch nodes by name, then
	// every Service port's own chains, ports in name order.
	rules := &Rules{Jumps: BaseJumps(), Stats: stats, key: key, names: names, ports: ports, dispatch: sh.dispatch,
		shared: sh.chains, counts: counts}
	for _, t := range []string{TableFilter, TableNAT} {
		table := Table{Name: t, Chains: make([]Chain, 0, len(sh.ordered[t])+sh.room(ports, t))}
		table.Chains = append(table.Chains, sh.ordered[t]...)
		for _, pr := range ports {
			if t == TableNAT {
				table.Chains = append(table.Chains, pr.nat...)
			} else {
				table.Chains = append(table.Chains, pr.filter...)
			}
		}
		rules.Tables = append(rules.Tables, table)
	}
	return rules
}

// sharedRender is what a render writes besides the Service ports' own
// chains: the top-level chains and the dispatch trees. It depends only on
// the render's key and every port's dispatch rules, so a sync whose changed
// ports kept their dispatch rules (an endpoint change: the common case)
// reuses it whole. It is never changed once made.
type sharedRender struct {
	chains   map[string]map[string][]string // by table, chain
	ordered  map[string][]Chain             // by table: the top-level chains, then the rest by name
	dispatch map[string][]string
	counts   ruleCounts
}

// room is how many chains the ports own in one table.
func (sh *sharedRender) room(ports []*portRender, table string) int {
	n := 0
	for _, pr := range ports {
		if table == TableNAT {
			n += len(pr.nat)
		} else {
			n += len(pr.filter)
		}
	}
	return n
}

// renderShared merges every port's dispatch rules into the dispatch trees
// and writes the top-level chains.
func renderShared(snap *Snapshot, cfg RenderConfig, ports []*portRender) *sharedRender {
	out := newOutput()
	top := TopLevelChains()
	for _, c := range top[TableNAT] {
		out.nat[c] = nil
	}
	for _, c := range top[TableFilter] {
		out.filter[c] = nil
	}
	out.mergeAll(ports)
	sh := &sharedRender{dispatch: out.buildDispatch(cfg.DispatchLeafSize),
		chains: map[string]map[string][]string{TableFilter: out.filter, TableNAT: out.nat}, ordered: map[string][]Chain{}}
	out.nat[ChainServices] = append(out.nat[ChainServices], nodePortJumps(snap, cfg)...)
	out.renderSharedChains(cfg)
	for _, t := range []string{TableFilter, TableNAT} {
		sh.ordered[t] = orderedTable(t, sh.chains[t], top[t], 0).Chains
		sh.counts.addChains(t, sh.ordered[t])
	}
	return sh
}

// sameDispatch reports whether every port of a render has the same
// dispatch rules as in the last one: the same names, and each port either
// reused or re-rendered with equal dispatch rules.
func sameDispatch(names []ServicePortName, ports []*portRender, lastNames []ServicePortName, lastPorts []*portRender) bool {
	if !sameSlice(names, lastNames) {
		return false
	}
	for i, pr := range ports {
		if old := lastPorts[i]; pr != old && !slices.Equal(pr.keys, old.keys) {
			return false
		}
	}
	return true
}

// reusable pairs each Service port with last time's render of it when that
// came from the very same objects, and counts the endpoints of the family.
// Both name lists are sorted, so one walk does it; with the tracker's
// aligned view (Snapshot.SetSorted) it looks nothing up in the maps (at
// 10,000 ports, two lookups each cost more than rendering one change).
func (r *Renderer) reusable(snap *Snapshot, names []ServicePortName, family v1.IPFamily) ([]*portRender, int) {
	ports := make([]*portRender, len(names))
	endpoints := 0
	sameNames := sameSlice(names, r.names)
	view := snap.sortedView()
	aligned := view != nil && view.svcList != nil && sameSlice(view.names, names)
	j := 0
	for i, name := range names {
		var svc *ServicePort
		var eps []Endpoint
		if aligned {
			svc, eps = view.svcList[i], view.epList[i]
		} else {
			svc, eps = snap.Services[name], snap.Endpoints[name]
		}
		var old *portRender
		if sameNames {
			old = r.ports[i]
		} else {
			// Mostly the next name is the same (its strings the very same,
			// which compares at once); order the names only when not.
			for j < len(r.names) && r.names[j] != name && lessName(r.names[j], name) {
				j++
			}
			if j < len(r.names) && r.names[j] == name {
				old = r.ports[j]
				j++
			}
		}
		if old != nil && old.svc == svc && sameSlice(old.eps, eps) {
			ports[i] = old
			endpoints += old.familyEndpoints
		} else {
			endpoints += countFamily(eps, family)
		}
	}
	return ports, endpoints
}

// reuseFrom fills the gaps in ports with other's render of the same
// Service port from the very same objects.
func reuseFrom(ports []*portRender, names []ServicePortName, snap *Snapshot, other *Rules) {
	for i, pr := range ports {
		if pr != nil {
			continue
		}
		if old := other.port(names[i]); old != nil && old.svc == snap.Services[names[i]] && sameSlice(old.eps, snap.Endpoints[names[i]]) {
			ports[i] = old
		}
	}
}

// port is the render of one Service port, or nil.
func (r *Rules) port(name ServicePortName) *portRender {
	i := sort.Search(len(r.names), func(i int) bool { return !lessName(r.names[i], name) })
	if i < len(r.names) && r.names[i] == name {
		return r.ports[i]
	}
	return nil
}

// cost is how many rules writing or deleting this Service port's rules
// takes: its own chains' rules and its dispatch entries.
func (p *portRender) cost() int {
	n := len(p.keys)
	for _, t := range p.rules {
		for _, c := range t {
			n += c
		}
	}
	return n
}

// orderedTable puts the top-level chains first, then the rest by name.
func orderedTable(name string, chains map[string][]string, first []string, room int) Table {
	t := Table{Name: name, Chains: make([]Chain, 0, len(chains)+room)}
	seen := map[string]bool{}
	for _, c := range first {
		t.Chains = append(t.Chains, Chain{Name: c, Rules: chains[c]})
		seen[c] = true
	}
	var rest []string
	for c := range chains {
		if !seen[c] {
			rest = append(rest, c)
		}
	}
	sort.Strings(rest)
	for _, c := range rest {
		t.Chains = append(t.Chains, Chain{Name: c, Rules: chains[c]})
	}
	return t
}

// nodePortJumps are the last rules of SWY-SERVICES: traffic to a local
// address that no Service address matched may be for a NodePort.
func nodePortJumps(snap *Snapshot, cfg RenderConfig) []string {
	c := comment("switchyard service nodeports; NOTE: this must be the last rule in this chain")
	if len(cfg.NodePortAddresses) == 0 && !cfg.NodePortPrimary {
		r := c.add("-m", "addrtype", "--dst-type", "LOCAL")
		switch {
		case cfg.Family == v1.IPv6Protocol:
			r = r.add("!", "-d", "::1/128")
		case !cfg.LocalhostNodePorts:
			r = r.add("!", "-d", "127.0.0.0/8")
		}
		return []string{r.add("-j", ChainNodePorts).String()}
	}
	var ips []netip.Addr
	if cfg.NodePortPrimary {
		if ip, ok := cfg.PrimaryIP(snap.Node); ok {
			ips = append(ips, ip)
		}
	} else {
		for _, a := range snap.HostAddrs {
			if familyOf(a) != cfg.Family {
				continue
			}
			for _, p := range cfg.NodePortAddresses {
				if p.Contains(a) {
					ips = append(ips, a)
					break
				}
			}
		}
	}
	sort.Slice(ips, func(i, j int) bool { return ips[i].Less(ips[j]) })
	var rules []string
	for _, ip := range ips {
		if ip.IsLoopback() && !cfg.LocalhostNodePortsActive() {
			continue
		}
		rules = append(rules, c.add("-d", hostPrefix(ip), "-j", ChainNodePorts).String())
	}
	return rules
}

// dispatchEntry is one "destination -> Service chain" decision.
type dispatchEntry struct {
	addr    netip.Addr
	proto   v1.Protocol
	port    int32
	comment string
	target  string
}

// renderSharedChains writes the chains no Service port owns: masquerade,
// forwarding and the localnet firewall.
func (o *output) renderSharedChains(cfg RenderConfig) {
	masq := cfg.MasqMark()
	o.nat[ChainPostrouting] = []string{
		ruleBuilder{"-m", "mark", "!", "--mark", masq + "/" + masq, "-j", "RETURN"}.String(),
		ruleBuilder{"-j", "MARK", "--xor-mark", masq}.String(),
		comment("switchyard service traffic requiring SNAT").add("-j", "MASQUERADE", "--random-fully").String(),
	}
	o.nat[ChainMarkMasq] = []string{ruleBuilder{"-j", "MARK", "--or-mark", masq}.String()}

	if !cfg.ConntrackTCPBeLiberal {
		drop := ruleBuilder{"-m", "conntrack", "--ctstate", "INVALID"}
		if cfg.NFAcctInvalid {
			drop = drop.add("-m", "nfacct", "--nfacct-name", NFAcctInvalidDropped)
		}
		o.filterRule(ChainForward, drop.add("-j", "DROP"))
	}
	o.filterRule(ChainForward, comment("switchyard forwarding rules").add("-m", "mark", "--mark", masq+"/"+masq, "-j", "ACCEPT"))
	o.filterRule(ChainForward, comment("switchyard forwarding conntrack rule").add("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"))
	if cfg.LocalhostNodePortsActive() {
		// route_localnet opens 127.0.0.0/8 to the network; drop what did not
		// come from loopback and was not NATed, as kubelet and kube-proxy do.
		o.filter[ChainFirewall] = []string{
			comment("block incoming localnet connections").add("-d", "127.0.0.0/8", "!", "-s", "127.0.0.0/8",
				"-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "DROP").String(),
		}
	}
}
