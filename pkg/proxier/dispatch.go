package proxier

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// The dispatch chains (SWY-SERVICES, SWY-NODEPORTS, SWY-EXTERNAL-SERVICES,
// SWY-PROXY-FIREWALL) hold one rule per Service address or port. As a flat
// list, every new connection walks it rule by rule, and a change anywhere
// rewrites the whole chain. Once a list grows past a leaf's size it becomes
// a tree of chains instead: each node covers a prefix of the key (the
// destination address, or the destination port of one protocol), and a
// parent jumps to a child with "-d 10.96.16.0/20" or "--dport 30208:30223".
//
// The tree is a pure function of the set of rules: a node's prefix is the
// common prefix of its keys rounded down to a nibble, so adding an address
// far away adds a node above without renaming anything below, and a node's
// chain name is a hash of its tree and prefix. A node with at most leafSize
// rules (or whose rules all share one key) is a leaf holding the rules
// themselves, in their original order; a bigger node splits on the next four
// bits into at most 16 children. A new connection crosses O(log n) rules,
// and a change to one Service rewrites one leaf (and its parents only when
// the shape changes).
//
// Every keyed rule matches its exact key, and keys under different children
// are disjoint, so the tree accepts exactly what the flat list accepted;
// rules sharing a key always share a leaf, so their relative order (which
// matters when one falls through) is kept.

const (
	dispatchChainPrefix = "SWY-DSP-"
	// DefaultDispatchLeafSize is the most rules a dispatch leaf holds.
	DefaultDispatchLeafSize = 48
	nibble                  = 4
)

// keyedRule is one rule of a dispatch chain and the key it matches exactly:
// a destination address, or (addr invalid) a protocol and destination port.
type keyedRule struct {
	addr  netip.Addr
	proto string
	port  int32
	rule  string
}

func addrKeyed(addr netip.Addr, rule ruleBuilder) keyedRule {
	return keyedRule{addr: addr, rule: rule.String()}
}

func portKeyed(proto string, port int32, rule ruleBuilder) keyedRule {
	return keyedRule{proto: proto, port: port, rule: rule.String()}
}

// treeKey maps a keyed rule into one bit space per kind: addresses as they
// are, ports as the low 16 bits of an IPv4 address (the high 16 are zero).
type treeKey struct {
	kind string // "addr" or the protocol
	key  netip.Addr
	base int // bits that carry no information (ports: 16)
	idx  int // position in the original list
}

func (k keyedRule) treeKey(idx int) treeKey {
	if k.addr.IsValid() {
		return treeKey{kind: "addr", key: k.addr.Unmap(), idx: idx}
	}
	return treeKey{kind: k.proto, key: netip.AddrFrom4([4]byte{0, 0, byte(k.port >> 8), byte(k.port)}), base: 16, idx: idx}
}

// dispatchTree builds the chains of one dispatch list.
type dispatchTree struct {
	id       string // table and root chain: part of every node's name
	leafSize int
	rules    []keyedRule
	chains   []Chain
}

// buildDispatch returns the root chain's rules for the list (the rules
// themselves while they fit in a leaf) and the node chains under it.
func buildDispatch(table, root string, rules []keyedRule, leafSize int) ([]string, []Chain) {
	if leafSize <= 0 {
		leafSize = DefaultDispatchLeafSize
	}
	if len(rules) <= leafSize {
		out := make([]string, len(rules))
		for i, r := range rules {
			out[i] = r.rule
		}
		return out, nil
	}
	t := &dispatchTree{id: table + "/" + root, leafSize: leafSize, rules: rules}
	keys := make([]treeKey, len(rules))
	for i, r := range rules {
		keys[i] = r.treeKey(i)
	}
	// Addresses first, then ports by protocol: the order the flat list
	// gives them when a Service's address and NodePort rules are apart.
	slices.SortStableFunc(keys, func(a, b treeKey) int {
		if (a.kind == "addr") != (b.kind == "addr") {
			if a.kind == "addr" {
				return -1
			}
			return 1
		}
		if c := cmp.Compare(a.kind, b.kind); c != 0 {
			return c
		}
		return a.key.Compare(b.key)
	})
	var out []string
	for start := 0; start < len(keys); {
		end := start
		for end < len(keys) && keys[end].kind == keys[start].kind {
			end++
		}
		out = append(out, t.child(keys[start:end])...)
		start = end
	}
	return out, t.chains
}

// child returns the rules a parent holds for one group of keys: the rule
// itself for a single key, else a jump to the group's node.
func (t *dispatchTree) child(keys []treeKey) []string {
	if len(keys) == 1 {
		return []string{t.rules[keys[0].idx].rule}
	}
	prefix, name := t.node(keys)
	return []string{t.match(keys[0], prefix).add("-j", name).String()}
}

// node writes the chain of a group of keys (sorted) and returns its prefix
// and name.
func (t *dispatchTree) node(keys []treeKey) (netip.Prefix, string) {
	first, last := keys[0].key, keys[len(keys)-1].key
	bits := commonBits(first, last)
	bits -= bits % nibble
	if bits < keys[0].base {
		bits = keys[0].base
	}
	prefix := netip.PrefixFrom(first, bits).Masked()
	name := dispatchChainPrefix + hashName(t.id+"|"+keys[0].kind+"|"+prefix.String())
	var rules []string
	if len(keys) <= t.leafSize || bits >= first.BitLen() {
		idx := make([]int, len(keys))
		for i, k := range keys {
			idx[i] = k.idx
		}
		slices.Sort(idx)
		for _, i := range idx {
			rules = append(rules, t.rules[i].rule)
		}
	} else {
		for start := 0; start < len(keys); {
			end := start + 1
			for end < len(keys) && nibbleAt(keys[end].key, bits) == nibbleAt(keys[start].key, bits) {
				end++
			}
			rules = append(rules, t.child(keys[start:end])...)
			start = end
		}
	}
	t.chains = append(t.chains, Chain{Name: name, Rules: rules})
	return prefix, name
}

// match is the parent's test for a child prefix.
func (t *dispatchTree) match(k treeKey, p netip.Prefix) ruleBuilder {
	if k.kind == "addr" {
		return ruleBuilder{"-d", p.String()}
	}
	lo := p.Addr().As4()
	first := int(lo[2])<<8 | int(lo[3])
	last := first | (1<<(32-p.Bits()) - 1)
	return ruleBuilder{"-p", k.kind, "-m", k.kind, "--dport", fmt.Sprintf("%d:%d", first, last)}
}

// commonBits is the length of the common prefix of two addresses of one family.
func commonBits(a, b netip.Addr) int {
	x, y := a.AsSlice(), b.AsSlice()
	for i := range x {
		if d := x[i] ^ y[i]; d != 0 {
			n := 0
			for d&0x80 == 0 {
				d <<= 1
				n++
			}
			return i*8 + n
		}
	}
	return len(x) * 8
}

// nibbleAt returns the four bits of a starting at bit (a multiple of 4).
func nibbleAt(a netip.Addr, bit int) byte {
	b := a.AsSlice()[bit/8]
	if bit%8 == 0 {
		return b >> 4
	}
	return b & 0x0f
}

// IsDispatchChain reports whether a chain is a node of a dispatch tree.
func IsDispatchChain(name string) bool { return strings.HasPrefix(name, dispatchChainPrefix) }
