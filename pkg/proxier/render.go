package proxier

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
)

// Chain names. Everything switchyard owns starts with ChainPrefix, never
// KUBE-, so it can be installed over a node that still has kube-proxy's rules.
const (
	ChainPrefix = "SWY-"

	// nat and filter
	ChainServices  = "SWY-SERVICES"
	ChainNodePorts = "SWY-NODEPORTS"
	// nat
	ChainPostrouting = "SWY-POSTROUTING"
	ChainMarkMasq    = "SWY-MARK-MASQ"
	// filter
	ChainExternalServices = "SWY-EXTERNAL-SERVICES"
	ChainForward          = "SWY-FORWARD"
	ChainProxyFirewall    = "SWY-PROXY-FIREWALL"
	ChainFirewall         = "SWY-FIREWALL"
	// ChainCanary is an empty chain in nat and filter: if it is gone,
	// someone flushed or rewrote the table, and a full sync follows.
	ChainCanary = "SWY-PROXY-CANARY"

	// kube-proxy's nfacct counter names (see RenderConfig.NFAcctInvalid).
	NFAcctInvalidDropped     = "ct_state_invalid_dropped_pkts"
	NFAcctLocalhostNodePorts = "localhost_nps_accepted_pkts"

	svcChainPrefix = "SWY-SVC-"
	svlChainPrefix = "SWY-SVL-"
	extChainPrefix = "SWY-EXT-"
	fwChainPrefix  = "SWY-FW-"
	sepChainPrefix = "SWY-SEP-"

	TableNAT    = "nat"
	TableFilter = "filter"
)

// RenderConfig holds the node-wide facts and flags that shape the rules for
// one IP family.
type RenderConfig struct {
	Family v1.IPFamily
	// ClusterCIDR, when valid, is the pod network of this family.
	ClusterCIDR netip.Prefix
	// DetectLocal decides which traffic comes from a pod (see LocalDetector):
	// traffic to a ClusterIP from anything else is masqueraded, and pod
	// traffic to an external address of an externalTrafficPolicy Local
	// Service is short-circuited.
	DetectLocal   LocalDetector
	MasqueradeAll bool
	MasqueradeBit int
	// NodePortAddresses limits the local addresses that accept NodePort
	// traffic to those inside these CIDRs; empty means every local address.
	NodePortAddresses []netip.Prefix
	// NFAcctInvalid and NFAcctLocalhost count the packets the INVALID drop
	// drops and the localhost NodePort packets accepted into kube-proxy's
	// nfacct counters (set only once the counters exist: a rule naming a
	// missing one is refused).
	NFAcctInvalid, NFAcctLocalhost bool
	// PrimaryIPOverride, when valid and of this family, is the node's
	// primary address instead of its Node object's first one (kube-proxy's
	// --bind-address).
	PrimaryIPOverride netip.Addr
	// NodePortPrimary limits NodePorts to the node's primary address (the
	// first address of this family in its Node object).
	NodePortPrimary bool
	// LocalhostNodePorts lets NodePorts answer on 127.0.0.0/8 (IPv4 only,
	// and only when NodePortAddresses is empty or includes loopback).
	LocalhostNodePorts bool
	// ConntrackTCPBeLiberal means nf_conntrack_tcp_be_liberal is set: then
	// out-of-window packets are not INVALID and the INVALID drop is left out.
	ConntrackTCPBeLiberal bool
	// DispatchLeafSize is the most rules a dispatch chain holds before it
	// becomes a tree (see dispatch.go); 0 means DefaultDispatchLeafSize.
	// Tests set it small to put every shape through the tree.
	DispatchLeafSize int

	// largeCluster is set by the renderer when the snapshot has more than
	// LargeClusterEndpoints endpoints of the family; being part of the
	// config, it is part of the renderer's cache key.
	largeCluster bool
}

// Local-traffic detection modes, as kube-proxy's --detect-local-mode.
const (
	DetectClusterCIDR         = "ClusterCIDR"
	DetectNodeCIDR            = "NodeCIDR"
	DetectBridgeInterface     = "BridgeInterface"
	DetectInterfaceNamePrefix = "InterfaceNamePrefix"
)

// LocalDetector says how to recognise traffic from this node's pods. The
// zero value (and ClusterCIDR mode without a CIDR) detects nothing.
type LocalDetector struct {
	// Mode is one of the Detect* constants; empty means ClusterCIDR.
	Mode string
	// Interface is the bridge (BridgeInterface) or the interface name
	// prefix (InterfaceNamePrefix).
	Interface string
}

// localMatch returns the match arguments for "from a pod" and "not from a
// pod", or ok=false when nothing can be detected (yet: NodeCIDR mode waits
// for the Node's podCIDRs).
func localMatch(snap *Snapshot, cfg RenderConfig) (local, notLocal []string, ok bool) {
	switch cfg.DetectLocal.Mode {
	case "", DetectClusterCIDR:
		if cfg.ClusterCIDR.IsValid() {
			return []string{"-s", cfg.ClusterCIDR.String()}, []string{"!", "-s", cfg.ClusterCIDR.String()}, true
		}
	case DetectNodeCIDR:
		for _, p := range snap.Node.PodCIDRs {
			if p.Addr().Is4() == (cfg.Family == v1.IPv4Protocol) {
				return []string{"-s", p.String()}, []string{"!", "-s", p.String()}, true
			}
		}
	case DetectBridgeInterface:
		if cfg.DetectLocal.Interface != "" {
			return []string{"-i", cfg.DetectLocal.Interface}, []string{"!", "-i", cfg.DetectLocal.Interface}, true
		}
	case DetectInterfaceNamePrefix:
		if cfg.DetectLocal.Interface != "" {
			return []string{"-i", cfg.DetectLocal.Interface + "+"}, []string{"!", "-i", cfg.DetectLocal.Interface + "+"}, true
		}
	}
	return nil, nil, false
}

// MasqMark is the mark value of the masquerade bit, e.g. "0x4000".
func (c RenderConfig) MasqMark() string { return fmt.Sprintf("%#x", uint32(1)<<c.MasqueradeBit) }

// LocalhostNodePortsActive says whether NodePorts answer on loopback with
// this config: it is then that route_localnet is needed.
func (c RenderConfig) LocalhostNodePortsActive() bool {
	if !c.LocalhostNodePorts || c.Family != v1.IPv4Protocol || c.NodePortPrimary {
		return false
	}
	if len(c.NodePortAddresses) == 0 {
		return true
	}
	for _, p := range c.NodePortAddresses {
		if p.Contains(netip.MustParseAddr("127.0.0.1")) {
			return true
		}
	}
	return false
}

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

// BaseJumps are the jumps from built-in chains, as kube-proxy installs them,
// in the order they end up in each chain.
func BaseJumps() []iptables.Jump {
	newConn := []string{"-m", "conntrack", "--ctstate", "NEW"}
	j := func(table, chain, target, comment string, extra []string) iptables.Jump {
		return iptables.Jump{Table: table, Chain: chain, Target: target, Comment: comment, Extra: extra}
	}
	const (
		portals  = "switchyard service portals"
		external = "switchyard externally-visible service portals"
		lbfw     = "switchyard load balancer firewall"
		localnet = "switchyard localnet firewall"
	)
	return []iptables.Jump{
		j(TableNAT, "PREROUTING", ChainServices, portals, nil),
		j(TableNAT, "OUTPUT", ChainServices, portals, nil),
		j(TableNAT, "POSTROUTING", ChainPostrouting, "switchyard postrouting rules", nil),
		j(TableFilter, "INPUT", ChainFirewall, localnet, nil),
		j(TableFilter, "INPUT", ChainProxyFirewall, lbfw, newConn),
		j(TableFilter, "INPUT", ChainNodePorts, "switchyard health check service ports", nil),
		j(TableFilter, "INPUT", ChainExternalServices, external, newConn),
		j(TableFilter, "FORWARD", ChainProxyFirewall, lbfw, newConn),
		j(TableFilter, "FORWARD", ChainForward, "switchyard forwarding rules", nil),
		j(TableFilter, "FORWARD", ChainServices, portals, newConn),
		j(TableFilter, "FORWARD", ChainExternalServices, external, newConn),
		j(TableFilter, "OUTPUT", ChainFirewall, localnet, nil),
		j(TableFilter, "OUTPUT", ChainProxyFirewall, lbfw, newConn),
		j(TableFilter, "OUTPUT", ChainServices, portals, newConn),
	}
}

// TopLevelChains are the chains every sync keeps, per table.
func TopLevelChains() map[string][]string {
	return map[string][]string{
		TableNAT:    {ChainServices, ChainNodePorts, ChainPostrouting, ChainMarkMasq, ChainCanary},
		TableFilter: {ChainServices, ChainExternalServices, ChainForward, ChainNodePorts, ChainProxyFirewall, ChainFirewall, ChainCanary},
	}
}

func portHash(n ServicePortName) string { return hashParts(n.String(), protoLower(n.Protocol)) }

// ServiceChainName is the SWY-SVC- chain of a Service port (every usable
// endpoint): a hash of its name and protocol, stable across versions.
func ServiceChainName(n ServicePortName) string { return svcChainPrefix + portHash(n) }

// LocalChainName is the SWY-SVL- chain of a Service port (node-local endpoints).
func LocalChainName(n ServicePortName) string { return svlChainPrefix + portHash(n) }

// ExternalChainName is the SWY-EXT- chain of a Service port (external traffic).
func ExternalChainName(n ServicePortName) string { return extChainPrefix + portHash(n) }

// FirewallChainName is the SWY-FW- chain of a Service port (source ranges).
func FirewallChainName(n ServicePortName) string { return fwChainPrefix + portHash(n) }

// EndpointChainName is the SWY-SEP- chain of one endpoint of a Service port.
func EndpointChainName(n ServicePortName, ep Endpoint) string {
	return sepChainPrefix + hashParts(n.String(), protoLower(n.Protocol), ep.String())
}

func hashName(s string) string { return hashParts(s) }

// hashParts is hashName of the parts joined, without building the joined
// string: chain names are made for every endpoint of every sync that
// renders its Service.
func hashParts(parts ...string) string {
	var buf [256]byte
	b := buf[:0]
	for _, p := range parts {
		b = append(b, p...)
	}
	sum := sha256.Sum256(b)
	var enc [56]byte
	base32.StdEncoding.Encode(enc[:], sum[:])
	return string(enc[:16])
}

// ruleBuilder assembles one rule's arguments.
type ruleBuilder []string

func (b ruleBuilder) add(args ...string) ruleBuilder { return append(b, args...) }

func (b ruleBuilder) String() string { return iptables.ArgsText(b) }

func comment(c string) ruleBuilder { return ruleBuilder{"-m", "comment", "--comment", c} }

func hostPrefix(a netip.Addr) string {
	return netip.PrefixFrom(a, a.BitLen()).String()
}

// destMatch is "-d ADDR/32 -p tcp -m comment ... -m tcp --dport PORT".
func destMatch(addr netip.Addr, proto v1.Protocol, port int32, c string) ruleBuilder {
	p := protoLower(proto)
	return ruleBuilder{"-d", hostPrefix(addr), "-p", p}.add(comment(c)...).add("-m", p, "--dport", fmt.Sprint(port))
}

// portMatch is "-p tcp -m comment ... -m tcp --dport PORT".
func portMatch(proto v1.Protocol, port int32, c string) ruleBuilder {
	p := protoLower(proto)
	return ruleBuilder{"-p", p}.add(comment(c)...).add("-m", p, "--dport", fmt.Sprint(port))
}

// output collects rendered chains.
type output struct {
	nat, filter map[string][]string
	// natKeys and filterKeys are the dispatch lists, built into trees last.
	natKeys, filterKeys map[string][]keyedRule
	stats               RenderStats
}

// merge adds one Service port's dispatch rules and figures.
func (o *output) merge(p *portRender) {
	for _, k := range p.keys {
		if k.nat {
			o.natKeys[k.root] = append(o.natKeys[k.root], k.rule)
		} else {
			o.filterKeys[k.root] = append(o.filterKeys[k.root], k.rule)
		}
	}
	o.stats.NoLocalInternal += p.stats.NoLocalInternal
	o.stats.NoLocalExternal += p.stats.NoLocalExternal
}

func (o *output) natKeyed(chain string, r keyedRule) { o.natKeys[chain] = append(o.natKeys[chain], r) }

func (o *output) filterKeyed(chain string, r keyedRule) {
	o.filterKeys[chain] = append(o.filterKeys[chain], r)
}

func (o *output) natChain(name string, rules []string) { o.nat[name] = rules }

func (o *output) natRule(chain string, rule ruleBuilder) {
	o.nat[chain] = append(o.nat[chain], rule.String())
}

func (o *output) filterRule(chain string, rule ruleBuilder) {
	o.filter[chain] = append(o.filter[chain], rule.String())
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

func sortedChains(m map[string][]string) []Chain {
	out := make([]Chain, 0, len(m))
	for name, rules := range m {
		out = append(out, Chain{Name: name, Rules: rules})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func newOutput() *output {
	return &output{nat: map[string][]string{}, filter: map[string][]string{},
		natKeys: map[string][]keyedRule{}, filterKeys: map[string][]keyedRule{}}
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
	masq := cfg.MasqMark()
	out := newOutput()
	top := TopLevelChains()
	for _, c := range top[TableNAT] {
		out.nat[c] = nil
	}
	for _, c := range top[TableFilter] {
		out.filter[c] = nil
	}

	// Pair each Service port with last time's render of it: both name
	// lists are sorted, so one walk does it (no map lookups; at 10,000
	// ports those cost more than the rendering of one change).
	names := snap.SortedNames()
	ports := make([]*portRender, len(names))
	svcs := make([]*ServicePort, len(names))
	epss := make([][]Endpoint, len(names))
	endpoints := 0
	sameNames := sameSlice(names, r.names)
	j := 0
	for i, name := range names {
		svc, eps := snap.Services[name], snap.Endpoints[name]
		svcs[i], epss[i] = svc, eps
		var old *portRender
		if sameNames {
			old = r.ports[i]
		} else {
			for j < len(r.names) && lessName(r.names[j], name) {
				j++
			}
			if j < len(r.names) && r.names[j] == name {
				old = r.ports[j]
			}
		}
		if old != nil && old.svc == svc && sameSlice(old.eps, eps) {
			ports[i] = old
			endpoints += old.familyEndpoints
		} else {
			endpoints += countFamily(eps, cfg.Family)
		}
	}
	cfg.largeCluster = endpoints > LargeClusterEndpoints
	// What every Service port's rules depend on besides its own objects.
	// (The host's addresses decide which endpoints are certainly remote.)
	key := fmt.Sprintf("%+v|%v|", cfg, snap.HostAddrs) + nodeKey(snap.Node)
	if key != r.key {
		clear(ports)
	}
	for _, other := range also {
		if other != nil && other.key == key {
			reuseFrom(ports, names, svcs, epss, other)
		}
	}
	nNAT, nFilter := 0, 0
	var counts ruleCounts
	for i, pr := range ports {
		if pr == nil {
			pr = renderPort(snap, cfg, svcs[i], epss[i], countFamily(epss[i], cfg.Family))
			ports[i] = pr
		}
		out.merge(pr)
		counts.add(pr.rules)
		nNAT += len(pr.nat)
		nFilter += len(pr.filter)
	}
	r.key, r.names, r.ports = key, names, ports

	// The dispatch lists, as trees once they are long; SWY-SERVICES ends
	// with the jump to SWY-NODEPORTS.
	dispatch := map[string][]string{}
	for _, k := range []struct {
		table  string
		chains map[string][]string
		keys   map[string][]keyedRule
	}{{TableNAT, out.nat, out.natKeys}, {TableFilter, out.filter, out.filterKeys}} {
		for root, list := range k.keys {
			rules, nodes := buildDispatch(k.table, root, list, cfg.DispatchLeafSize)
			k.chains[root] = append(rules, k.chains[root]...)
			for _, c := range nodes {
				k.chains[c.Name] = c.Rules
				dispatch[k.table] = append(dispatch[k.table], c.Name)
			}
		}
	}
	out.nat[ChainServices] = append(out.nat[ChainServices], nodePortJumps(snap, cfg)...)

	out.nat[ChainPostrouting] = []string{
		ruleBuilder{"-m", "mark", "!", "--mark", masq + "/" + masq, "-j", "RETURN"}.String(),
		ruleBuilder{"-j", "MARK", "--xor-mark", masq}.String(),
		comment("switchyard service traffic requiring SNAT").add("-j", "MASQUERADE", "--random-fully").String(),
	}
	out.nat[ChainMarkMasq] = []string{ruleBuilder{"-j", "MARK", "--or-mark", masq}.String()}

	if !cfg.ConntrackTCPBeLiberal {
		drop := ruleBuilder{"-m", "conntrack", "--ctstate", "INVALID"}
		if cfg.NFAcctInvalid {
			drop = drop.add("-m", "nfacct", "--nfacct-name", NFAcctInvalidDropped)
		}
		out.filterRule(ChainForward, drop.add("-j", "DROP"))
	}
	out.filterRule(ChainForward, comment("switchyard forwarding rules").add("-m", "mark", "--mark", masq+"/"+masq, "-j", "ACCEPT"))
	out.filterRule(ChainForward, comment("switchyard forwarding conntrack rule").add("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"))
	if cfg.LocalhostNodePortsActive() {
		// route_localnet opens 127.0.0.0/8 to the network; drop what did not
		// come from loopback and was not NATed, as kubelet and kube-proxy do.
		out.filter[ChainFirewall] = []string{
			comment("block incoming localnet connections").add("-d", "127.0.0.0/8", "!", "-s", "127.0.0.0/8",
				"-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "DROP").String(),
		}
	}

	// Each table: the top-level chains, the dispatch nodes by name, then
	// every Service port's own chains, ports in name order.
	rules := &Rules{Jumps: BaseJumps(), Stats: out.stats, key: key, names: names, ports: ports, dispatch: dispatch,
		shared: map[string]map[string][]string{TableFilter: out.filter, TableNAT: out.nat}}
	for _, t := range []string{TableFilter, TableNAT} {
		room := nNAT
		if t == TableFilter {
			room = nFilter
		}
		table := orderedTable(t, rules.shared[t], top[t], room)
		counts.addChains(t, table.Chains) // the shared chains, so far

		for _, pr := range ports {
			if t == TableNAT {
				table.Chains = append(table.Chains, pr.nat...)
			} else {
				table.Chains = append(table.Chains, pr.filter...)
			}
		}
		rules.Tables = append(rules.Tables, table)
	}
	rules.counts = counts
	return rules
}

// reuseFrom fills the gaps in ports with other's render of the same
// Service port from the very same objects.
func reuseFrom(ports []*portRender, names []ServicePortName, svcs []*ServicePort, epss [][]Endpoint, other *Rules) {
	for i, pr := range ports {
		if pr != nil {
			continue
		}
		if old := other.port(names[i]); old != nil && old.svc == svcs[i] && sameSlice(old.eps, epss[i]) {
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

// PrimaryIP is the node's primary address of the config's family: the
// override when one is set for this family, else the Node object's first.
func (c RenderConfig) PrimaryIP(n NodeInfo) (netip.Addr, bool) {
	if c.PrimaryIPOverride.IsValid() && familyOf(c.PrimaryIPOverride) == c.Family {
		return c.PrimaryIPOverride, true
	}
	return n.PrimaryIP(c.Family)
}
