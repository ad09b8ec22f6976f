package proxier

import (
	"fmt"
	"net/netip"
	"slices"
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

// mergeAll adds every Service port's dispatch rules, each list allocated
// once at its full length.
func (o *output) mergeAll(ports []*portRender) {
	// A handful of roots: a list beats a map keyed by their names.
	var sizes []rootSize
	for _, p := range ports {
	keys:
		for _, k := range p.keys {
			for i := range sizes {
				if sizes[i].nat == k.nat && sizes[i].root == k.root {
					sizes[i].n++
					continue keys
				}
			}
			sizes = append(sizes, rootSize{nat: k.nat, root: k.root, n: 1})
		}
	}
	for _, r := range sizes {
		if r.nat {
			o.natKeys[r.root] = slices.Grow(o.natKeys[r.root], r.n)
		} else {
			o.filterKeys[r.root] = slices.Grow(o.filterKeys[r.root], r.n)
		}
	}
	for _, p := range ports {
		o.merge(p)
	}
}

type rootSize struct {
	nat  bool
	root string
	n    int
}

// merge adds one Service port's dispatch rules.
func (o *output) merge(p *portRender) {
	for _, k := range p.keys {
		if k.nat {
			o.natKeys[k.root] = append(o.natKeys[k.root], k.rule)
		} else {
			o.filterKeys[k.root] = append(o.filterKeys[k.root], k.rule)
		}
	}
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
