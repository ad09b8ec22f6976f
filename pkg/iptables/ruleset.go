package iptables

import (
	"bufio"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Chain is one chain of a table.
type Chain struct {
	Name    string
	Builtin bool
	Policy  string // for built-in chains
	Rules   []*Rule
}

// Table is one iptables table.
type Table struct {
	Name   string
	Chains map[string]*Chain
	// Order is the order chains were created in (built-ins first).
	Order []string
}

// Ruleset is an in-memory copy of the tables of one IP family. It reads
// iptables-save output and applies iptables-restore input the way the kernel
// would (with --noflush semantics when asked), so tests can check what a
// sequence of restores leaves behind without root.
type Ruleset struct {
	Tables map[string]*Table
}

var builtinChains = map[string][]string{
	"raw":      {"PREROUTING", "OUTPUT"},
	"mangle":   {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
	"nat":      {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	"filter":   {"INPUT", "FORWARD", "OUTPUT"},
	"security": {"INPUT", "FORWARD", "OUTPUT"},
}

// standardTargets are targets that are not chains. A jump to anything else
// must name an existing chain.
var standardTargets = map[string]bool{
	"ACCEPT": true, "DROP": true, "RETURN": true, "QUEUE": true, "REJECT": true, "DNAT": true, "SNAT": true,
	"MASQUERADE": true, "REDIRECT": true, "MARK": true, "CONNMARK": true, "LOG": true, "NFLOG": true,
	"NOTRACK": true, "CT": true, "TPROXY": true, "NFQUEUE": true, "TCPMSS": true, "CHECKSUM": true,
	"AUDIT": true, "SET": true, "TRACE": true, "CLASSIFY": true, "DSCP": true, "TOS": true, "TTL": true,
	"HL": true, "NETMAP": true, "ULOG": true, "TEE": true, "SECMARK": true, "CONNSECMARK": true,
	"IDLETIMER": true, "LED": true, "SYNPROXY": true,
}

// NewRuleset returns an empty ruleset: no tables until they are used.
func NewRuleset() *Ruleset { return &Ruleset{Tables: map[string]*Table{}} }

func newTable(name string) *Table {
	t := &Table{Name: name, Chains: map[string]*Chain{}}
	for _, c := range builtinChains[name] {
		t.Chains[c] = &Chain{Name: c, Builtin: true, Policy: "ACCEPT"}
		t.Order = append(t.Order, c)
	}
	return t
}

// Table returns a table, creating it (with its built-in chains) if needed.
func (rs *Ruleset) Table(name string) *Table {
	t := rs.Tables[name]
	if t == nil {
		t = newTable(name)
		rs.Tables[name] = t
	}
	return t
}

// Clone returns a deep copy. Rules are shared: they are never mutated.
func (rs *Ruleset) Clone() *Ruleset {
	out := NewRuleset()
	for name, t := range rs.Tables {
		nt := &Table{Name: name, Chains: map[string]*Chain{}, Order: append([]string{}, t.Order...)}
		for cn, c := range t.Chains {
			nc := *c
			nc.Rules = append([]*Rule{}, c.Rules...)
			nt.Chains[cn] = &nc
		}
		out.Tables[name] = nt
	}
	return out
}

// ParseSave parses iptables-save output (or any restore text) into a new
// ruleset, as if restored into an empty namespace.
func ParseSave(text string) (*Ruleset, error) {
	rs := NewRuleset()
	if err := rs.Restore(text, false); err != nil {
		return nil, err
	}
	return rs, nil
}

// RestoreError names the line of restore input that failed.
type RestoreError struct {
	Line int
	Text string
	Err  error
}

func (e *RestoreError) Error() string {
	return fmt.Sprintf("line %d: %v: %s", e.Line, e.Err, e.Text)
}

func (e *RestoreError) Unwrap() error { return e.Err }

// Restore applies iptables-restore input. Each table block is committed
// atomically at COMMIT: a block with an error leaves that table unchanged
// (blocks committed earlier stay, as with the real tool). Without noflush,
// every table named in the input is emptied first.
func (rs *Ruleset) Restore(text string, noflush bool) error {
	var cur *Table
	var curName string
	var staged *Ruleset
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1024*1024), 64*1024*1024)
	lineNo := 0
	fail := func(line string, err error) error {
		return &RestoreError{Line: lineNo, Text: line, Err: err}
	}
	for sc.Scan() {
		lineNo++
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		switch {
		case line[0] == '*':
			if cur != nil {
				return fail(line, fmt.Errorf("table %s not committed", curName))
			}
			curName = line[1:]
			if _, ok := builtinChains[curName]; !ok {
				return fail(line, fmt.Errorf("unknown table %q", curName))
			}
			staged = rs.Clone()
			if !noflush {
				staged.Tables[curName] = newTable(curName)
			}
			cur = staged.Table(curName)
		case line == "COMMIT":
			if cur == nil {
				return fail(line, fmt.Errorf("COMMIT outside a table"))
			}
			rs.Tables[curName] = staged.Tables[curName]
			cur, staged = nil, nil
		case cur == nil:
			return fail(line, fmt.Errorf("rule outside a table"))
		case line[0] == ':':
			fields := strings.Fields(line[1:])
			if len(fields) < 2 {
				return fail(line, fmt.Errorf("bad chain declaration"))
			}
			name, policy := fields[0], fields[1]
			if c, ok := cur.Chains[name]; ok && c.Builtin {
				if policy != "-" {
					c.Policy = policy
				}
				continue
			}
			if policy != "-" {
				return fail(line, fmt.Errorf("policy on user-defined chain %s", name))
			}
			if c, ok := cur.Chains[name]; ok {
				c.Rules = nil // declaring an existing chain flushes it
				continue
			}
			cur.Chains[name] = &Chain{Name: name}
			cur.Order = append(cur.Order, name)
		default:
			if err := cur.command(line); err != nil {
				return fail(line, err)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if cur != nil {
		return fail("", fmt.Errorf("table %s not committed", curName))
	}
	return nil
}

// command applies one -A/-I/-D/-X/-F/-N/-P line to a table.
func (t *Table) command(line string) error {
	toks, err := tokenize(line)
	if err != nil {
		return err
	}
	if len(toks) == 0 {
		return nil
	}
	op, args := toks[0].text, toks[1:]
	switch op {
	case "-A", "--append", "-I", "--insert", "-D", "--delete":
		c, err := t.chainArg(op, args)
		if err != nil {
			return err
		}
		del := op == "-D" || op == "--delete"
		return t.ruleCommand(!del, op == "-A" || op == "--append", c, args[1:])
	case "-F", "--flush":
		if len(args) == 0 {
			for _, c := range t.Chains {
				c.Rules = nil
			}
			return nil
		}
		c, err := t.chainArg(op, args)
		if err != nil {
			return err
		}
		c.Rules = nil
	case "-N", "--new-chain":
		if len(args) != 1 {
			return fmt.Errorf("-N needs a chain")
		}
		if _, ok := t.Chains[args[0].text]; ok {
			return fmt.Errorf("chain %s already exists", args[0].text)
		}
		t.Chains[args[0].text] = &Chain{Name: args[0].text}
		t.Order = append(t.Order, args[0].text)
	case "-X", "--delete-chain":
		return t.deleteChains(op, args)
	case "-P", "--policy":
		c, err := t.chainArg(op, args)
		if err != nil {
			return err
		}
		if !c.Builtin || len(args) != 2 {
			return fmt.Errorf("bad policy command")
		}
		c.Policy = args[1].text
	default:
		return fmt.Errorf("unknown command %q", op)
	}
	return nil
}

// chainArg is the existing chain a command names first.
func (t *Table) chainArg(op string, args []token) (*Chain, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("%s needs a chain", op)
	}
	c := t.Chains[args[0].text]
	if c == nil {
		return nil, fmt.Errorf("chain %s does not exist", args[0].text)
	}
	return c, nil
}

// ruleCommand appends (add and appendAtEnd), inserts (add) or deletes (by
// number or by text) one rule of c; rest is the command after the chain.
func (t *Table) ruleCommand(add, appendAtEnd bool, c *Chain, rest []token) error {
	pos := -1
	if len(rest) > 0 && !appendAtEnd {
		if n, err := strconv.Atoi(rest[0].text); err == nil && !rest[0].quoted {
			pos = n
			rest = rest[1:]
		}
	}
	if !add && pos > 0 && len(rest) == 0 {
		if pos > len(c.Rules) {
			return fmt.Errorf("index of deletion too big")
		}
		c.Rules = append(c.Rules[:pos-1], c.Rules[pos:]...)
		return nil
	}
	r, err := parseRuleTokens(joinTokens(rest), rest)
	if err != nil {
		return err
	}
	if !add {
		for i, old := range c.Rules {
			if old.Text == r.Text {
				c.Rules = append(c.Rules[:i], c.Rules[i+1:]...)
				return nil
			}
		}
		return fmt.Errorf("bad rule (does a matching rule exist in that chain?)")
	}
	if r.Target != "" && !standardTargets[r.Target] {
		if _, ok := t.Chains[r.Target]; !ok {
			return fmt.Errorf("couldn't load target %q: no such chain", r.Target)
		}
	}
	if appendAtEnd {
		c.Rules = append(c.Rules, r)
		return nil
	}
	if pos < 1 {
		pos = 1
	}
	if pos > len(c.Rules)+1 {
		return fmt.Errorf("index of insertion too big")
	}
	c.Rules = append(c.Rules[:pos-1], append([]*Rule{r}, c.Rules[pos-1:]...)...)
	return nil
}

// deleteChains is -X: the named chain, or every user chain; each must be
// empty and unreferenced.
func (t *Table) deleteChains(op string, args []token) error {
	var victims []string
	if len(args) == 0 {
		for _, n := range t.Order {
			if !t.Chains[n].Builtin {
				victims = append(victims, n)
			}
		}
	} else {
		c, err := t.chainArg(op, args)
		if err != nil {
			return err
		}
		if c.Builtin {
			return fmt.Errorf("cannot delete built-in chain %s", c.Name)
		}
		victims = []string{c.Name}
	}
	del := map[string]bool{}
	for _, v := range victims {
		del[v] = true
	}
	for _, c := range t.Chains {
		if del[c.Name] && len(c.Rules) > 0 {
			return fmt.Errorf("chain %s is not empty", c.Name)
		}
		for _, r := range c.Rules {
			if del[r.Target] {
				return fmt.Errorf("chain %s is still referenced from %s", r.Target, c.Name)
			}
		}
	}
	for _, v := range victims {
		delete(t.Chains, v)
	}
	order := t.Order[:0]
	for _, n := range t.Order {
		if !del[n] {
			order = append(order, n)
		}
	}
	t.Order = order
	return nil
}

func joinTokens(toks []token) string {
	parts := make([]string, len(toks))
	for i, t := range toks {
		if t.quoted {
			parts[i] = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(t.text) + `"`
		} else {
			parts[i] = t.text
		}
	}
	return strings.Join(parts, " ")
}

// Save writes the ruleset as iptables-save would (without counters), tables
// in name order and chains in creation order.
func (rs *Ruleset) Save() string {
	var b strings.Builder
	names := make([]string, 0, len(rs.Tables))
	for n := range rs.Tables {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		b.WriteString(rs.Tables[n].save())
	}
	return b.String()
}

func (t *Table) save() string {
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n", t.Name)
	for _, n := range t.Order {
		c := t.Chains[n]
		policy := "-"
		if c.Builtin {
			policy = c.Policy
		}
		fmt.Fprintf(&b, ":%s %s [0:0]\n", n, policy)
	}
	for _, n := range t.Order {
		for _, r := range t.Chains[n].Rules {
			fmt.Fprintf(&b, "-A %s %s\n", n, r.Text)
		}
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// ChainNames returns the names of a table's chains with the given prefix.
func (rs *Ruleset) ChainNames(table, prefix string) []string {
	t := rs.Tables[table]
	if t == nil {
		return nil
	}
	var out []string
	for _, n := range t.Order {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	return out
}

// RuleTexts returns the rule texts of a chain, or nil if it does not exist.
func (rs *Ruleset) RuleTexts(table, chain string) []string {
	t := rs.Tables[table]
	if t == nil || t.Chains[chain] == nil {
		return nil
	}
	out := make([]string, 0, len(t.Chains[chain].Rules))
	for _, r := range t.Chains[chain].Rules {
		out = append(out, r.Text)
	}
	return out
}
