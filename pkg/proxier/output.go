package proxier

import (
	"fmt"
	"net/netip"
	"sort"

	v1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
)

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

func newOutput() *output {
	return &output{nat: map[string][]string{}, filter: map[string][]string{},
		natKeys: map[string][]keyedRule{}, filterKeys: map[string][]keyedRule{}}
}

func sortedChains(m map[string][]string) []Chain {
	out := make([]Chain, 0, len(m))
	for name, rules := range m {
		out = append(out, Chain{Name: name, Rules: rules})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// buildDispatch turns the dispatch lists into rules, as trees once they are
// long, and returns each table's dispatch node chains.
func (o *output) buildDispatch(leafSize int) map[string][]string {
	dispatch := map[string][]string{}
	for _, k := range []struct {
		table  string
		chains map[string][]string
		keys   map[string][]keyedRule
	}{{TableNAT, o.nat, o.natKeys}, {TableFilter, o.filter, o.filterKeys}} {
		for root, list := range k.keys {
			rules, nodes := buildDispatch(k.table, root, list, leafSize)
			k.chains[root] = append(rules, k.chains[root]...)
			for _, c := range nodes {
				k.chains[c.Name] = c.Rules
				dispatch[k.table] = append(dispatch[k.table], c.Name)
			}
		}
	}
	return dispatch
}
