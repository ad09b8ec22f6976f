package proxier

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
)

// Chain names. Everything switchyard owns starts with ChainPrefix, never
// KUBE-, so it can be installed over a node that still has kube-proxy's rules.
const (
	ChainPrefix = "SWY-"

	ChainServices         = "SWY-SERVICES"
	ChainNodePorts        = "SWY-NODEPORTS"
	ChainPostrouting      = "SWY-POSTROUTING"
	ChainMarkMasq         = "SWY-MARK-MASQ"
	ChainExternalServices = "SWY-EXTERNAL-SERVICES"
	ChainForward          = "SWY-FORWARD"

	svcChainPrefix = "SWY-SVC-"
	sepChainPrefix = "SWY-SEP-"

	TableNAT    = "nat"
	TableFilter = "filter"
)

// RenderConfig holds the node-wide facts and flags that shape the rules for
// one IP family.
type RenderConfig struct {
	Family v1.IPFamily
	// ClusterCIDR, when valid, is the pod network of this family: traffic to
	// a ClusterIP from outside it is masqueraded.
	ClusterCIDR   netip.Prefix
	MasqueradeAll bool
	MasqueradeBit int
}

// MasqMark is the mark value of the masquerade bit, e.g. "0x4000".
func (c RenderConfig) MasqMark() string { return fmt.Sprintf("%#x", uint32(1)<<c.MasqueradeBit) }

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

// BaseJumps are the jumps from built-in chains, as kube-proxy installs them.
func BaseJumps() []iptables.Jump {
	newConn := []string{"-m", "conntrack", "--ctstate", "NEW"}
	return []iptables.Jump{
		{Table: TableNAT, Chain: "PREROUTING", Target: ChainServices, Comment: "switchyard service portals"},
		{Table: TableNAT, Chain: "OUTPUT", Target: ChainServices, Comment: "switchyard service portals"},
		{Table: TableNAT, Chain: "POSTROUTING", Target: ChainPostrouting, Comment: "switchyard postrouting rules"},
		{Table: TableFilter, Chain: "INPUT", Target: ChainExternalServices, Comment: "switchyard externally-visible service portals", Extra: newConn},
		{Table: TableFilter, Chain: "FORWARD", Target: ChainForward, Comment: "switchyard forwarding rules"},
		{Table: TableFilter, Chain: "FORWARD", Target: ChainServices, Comment: "switchyard service portals", Extra: newConn},
		{Table: TableFilter, Chain: "FORWARD", Target: ChainExternalServices, Comment: "switchyard externally-visible service portals", Extra: newConn},
		{Table: TableFilter, Chain: "OUTPUT", Target: ChainServices, Comment: "switchyard service portals", Extra: newConn},
	}
}

// ServiceChainName is the SWY-SVC- chain of a Service port: a hash of its
// name and protocol, stable across versions and restarts.
func ServiceChainName(n ServicePortName) string {
	return svcChainPrefix + hashName(n.String()+protoLower(n.Protocol))
}

// EndpointChainName is the SWY-SEP- chain of one endpoint of a Service port.
func EndpointChainName(n ServicePortName, ep Endpoint) string {
	return sepChainPrefix + hashName(n.String()+protoLower(n.Protocol)+ep.String())
}

func hashName(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:16]
}

// ruleBuilder assembles one rule's arguments.
type ruleBuilder []string

func (b ruleBuilder) add(args ...string) ruleBuilder { return append(b, args...) }

func (b ruleBuilder) String() string {
	parts := make([]string, len(b))
	for i, a := range b {
		parts[i] = iptables.QuoteArg(a)
	}
	return strings.Join(parts, " ")
}

func hostPrefix(a netip.Addr) string {
	return netip.PrefixFrom(a, a.BitLen()).String()
}

// destMatch is "-d VIP/32 -p tcp -m tcp --dport PORT" with a comment.
func destMatch(addr netip.Addr, proto v1.Protocol, port int32, comment string) ruleBuilder {
	p := protoLower(proto)
	return ruleBuilder{"-d", hostPrefix(addr), "-p", p, "-m", "comment", "--comment", comment, "-m", p, "--dport", strconv.Itoa(int(port))}
}

// Render turns a snapshot into the complete ruleset for one IP family. It is
// a pure function: the same snapshot and config always give the same rules.
func Render(snap *Snapshot, cfg RenderConfig) *Rules {
	masq := cfg.MasqMark()
	nat := map[string][]string{}
	filter := map[string][]string{}
	var natOrder, filterOrder []string
	addNAT := func(name string, rules []string) {
		nat[name] = rules
		natOrder = append(natOrder, name)
	}

	var dispatch []dispatchEntry
	var rejects []string

	for _, name := range snap.SortedNames() {
		svc := snap.Services[name]
		vip, ok := svc.ClusterIP(cfg.Family)
		if !ok {
			continue
		}
		eps := clusterEndpoints(snap.Endpoints[name], cfg.Family)
		if len(eps) == 0 {
			rejects = append(rejects, destMatch(vip, name.Protocol, svc.Port, name.String()+" has no endpoints").add("-j", "REJECT").String())
			continue
		}
		svcChain := ServiceChainName(name)
		dispatch = append(dispatch, dispatchEntry{addr: vip, proto: name.Protocol, port: svc.Port, comment: name.String() + " cluster IP", target: svcChain})

		var svcRules []string
		if cfg.MasqueradeAll {
			svcRules = append(svcRules, destMatch(vip, name.Protocol, svc.Port, name.String()+" cluster IP").add("-j", ChainMarkMasq).String())
		} else if cfg.ClusterCIDR.IsValid() {
			svcRules = append(svcRules, destMatch(vip, name.Protocol, svc.Port, name.String()+" cluster IP").
				add("!", "-s", cfg.ClusterCIDR.String(), "-j", ChainMarkMasq).String())
		}
		sepNames := make([]string, len(eps))
		for i, ep := range eps {
			sepNames[i] = EndpointChainName(name, ep)
		}
		if svc.AffinityTimeout > 0 {
			for i, ep := range eps {
				svcRules = append(svcRules, ruleBuilder{"-m", "comment", "--comment", name.String() + " -> " + ep.String(),
					"-m", "recent", "--name", sepNames[i], "--rcheck", "--seconds", strconv.Itoa(int(svc.AffinityTimeout)), "--reap",
					"-j", sepNames[i]}.String())
			}
		}
		for i, ep := range eps {
			r := ruleBuilder{"-m", "comment", "--comment", name.String() + " -> " + ep.String()}
			if left := len(eps) - i; left > 1 {
				r = r.add("-m", "statistic", "--mode", "random", "--probability", fmt.Sprintf("%0.10f", 1.0/float64(left)))
			}
			svcRules = append(svcRules, r.add("-j", sepNames[i]).String())
		}
		addNAT(svcChain, svcRules)

		for i, ep := range eps {
			p := protoLower(name.Protocol)
			sep := []string{
				ruleBuilder{"-s", hostPrefix(ep.Addr), "-m", "comment", "--comment", name.String(), "-j", ChainMarkMasq}.String(),
			}
			dnat := ruleBuilder{"-p", p, "-m", "comment", "--comment", name.String()}
			if svc.AffinityTimeout > 0 {
				dnat = dnat.add("-m", "recent", "--name", sepNames[i], "--set")
			}
			sep = append(sep, dnat.add("-m", p, "-j", "DNAT", "--to-destination", ep.String()).String())
			addNAT(sepNames[i], sep)
		}
	}

	top := dispatchChains(ChainServices, dispatch)
	top[0].Rules = append(top[0].Rules, ruleBuilder{"-m", "comment", "--comment",
		"switchyard service nodeports; NOTE: this must be the last rule in this chain",
		"-m", "addrtype", "--dst-type", "LOCAL", "-j", ChainNodePorts}.String())

	fixedNAT := []Chain{
		top[0],
		{Name: ChainNodePorts},
		{Name: ChainPostrouting, Rules: []string{
			ruleBuilder{"-m", "mark", "!", "--mark", masq + "/" + masq, "-j", "RETURN"}.String(),
			ruleBuilder{"-j", "MARK", "--xor-mark", masq}.String(),
			ruleBuilder{"-m", "comment", "--comment", "switchyard service traffic requiring SNAT", "-j", "MASQUERADE", "--random-fully"}.String(),
		}},
		{Name: ChainMarkMasq, Rules: []string{ruleBuilder{"-j", "MARK", "--or-mark", masq}.String()}},
	}
	fixedNAT = append(fixedNAT, top[1:]...)

	filterOrder = []string{ChainServices, ChainExternalServices, ChainForward}
	filter[ChainServices] = rejects
	filter[ChainExternalServices] = nil
	filter[ChainForward] = []string{
		ruleBuilder{"-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"}.String(),
		ruleBuilder{"-m", "comment", "--comment", "switchyard forwarding rules", "-m", "mark", "--mark", masq + "/" + masq, "-j", "ACCEPT"}.String(),
		ruleBuilder{"-m", "comment", "--comment", "switchyard forwarding conntrack rule", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"}.String(),
	}

	rules := &Rules{Jumps: BaseJumps()}
	natTable := Table{Name: TableNAT, Chains: fixedNAT}
	sort.Strings(natOrder)
	for _, n := range natOrder {
		natTable.Chains = append(natTable.Chains, Chain{Name: n, Rules: nat[n]})
	}
	filterTable := Table{Name: TableFilter}
	for _, n := range filterOrder {
		filterTable.Chains = append(filterTable.Chains, Chain{Name: n, Rules: filter[n]})
	}
	rules.Tables = []Table{filterTable, natTable}
	return rules
}

// clusterEndpoints picks the endpoints cluster traffic may use: the ready
// ones, or, when none is ready, those still serving while terminating (so a
// rolling update never drops traffic), as kube-proxy does.
func clusterEndpoints(all []Endpoint, family v1.IPFamily) []Endpoint {
	var ready, terminating []Endpoint
	for _, ep := range all {
		if familyOf(ep.Addr) != family {
			continue
		}
		switch {
		case ep.Ready:
			ready = append(ready, ep)
		case ep.Serving && ep.Terminating:
			terminating = append(terminating, ep)
		}
	}
	if len(ready) > 0 {
		return ready
	}
	return terminating
}

// dispatchEntry is one "destination -> Service chain" decision.
type dispatchEntry struct {
	addr    netip.Addr
	proto   v1.Protocol
	port    int32
	comment string
	target  string
}

// dispatchChains builds the chain (or, later, the tree of chains) that sends
// traffic for each Service address to its chain. The first chain returned is
// the root, named root; any further ones are its children. Today this is a
// flat list.
func dispatchChains(root string, entries []dispatchEntry) []Chain {
	rules := make([]string, 0, len(entries)+1)
	for _, e := range entries {
		rules = append(rules, destMatch(e.addr, e.proto, e.port, e.comment).add("-j", e.target).String())
	}
	return []Chain{{Name: root, Rules: rules}}
}

// RestoreText renders complete rules as iptables-restore input for a fresh
// network namespace: every chain declared and filled, and the jumps from the
// built-in chains inserted. Built-in chains are never declared, so their
// policies are untouched.
func RestoreText(r *Rules) string {
	var b strings.Builder
	for _, t := range r.Tables {
		fmt.Fprintf(&b, "*%s\n", t.Name)
		for _, c := range t.Chains {
			fmt.Fprintf(&b, ":%s - [0:0]\n", c.Name)
		}
		for _, c := range t.Chains {
			for _, rule := range c.Rules {
				fmt.Fprintf(&b, "-A %s %s\n", c.Name, rule)
			}
		}
		jumps := []iptables.Jump{}
		for _, j := range r.Jumps {
			if j.Table == t.Name {
				jumps = append(jumps, j)
			}
		}
		// Insert in reverse so the final order matches BaseJumps.
		for i := len(jumps) - 1; i >= 0; i-- {
			fmt.Fprintf(&b, "-I %s 1 %s\n", jumps[i].Chain, ruleBuilder(jumps[i].Args()).String())
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}
