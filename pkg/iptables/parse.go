package iptables

import (
	"fmt"
	"strings"
)

// Option is one option of a rule: a generic one (-s, -d, -p, -i, -o) or one
// belonging to a match module or the target, with its values.
type Option struct {
	Name    string // as written, e.g. "--dport" or "-s"
	Values  []string
	Negated bool
}

// Match is one match module ("-m tcp ...") with its options. Generic options
// are kept in Rule.Generic.
type Match struct {
	Module  string
	Options []Option
}

// Rule is one parsed rule. Everything is kept, including matches and targets
// this package does not understand, so foreign rules survive a round trip.
type Rule struct {
	// Text is the rule's arguments as written (without "-A CHAIN").
	Text       string
	Generic    []Option
	Matches    []Match
	Target     string
	Goto       bool // -g instead of -j
	TargetArgs []Option
}

// Comment returns the rule's comment, or "".
func (r *Rule) Comment() string {
	for _, m := range r.Matches {
		if m.Module == "comment" {
			if o := m.Option("--comment"); o != nil && len(o.Values) > 0 {
				return o.Values[0]
			}
		}
	}
	return ""
}

// Option returns the named option of a match, or nil.
func (m *Match) Option(name string) *Option {
	for i := range m.Options {
		if m.Options[i].Name == name {
			return &m.Options[i]
		}
	}
	return nil
}

// TargetOption returns the named target option, or nil.
func (r *Rule) TargetOption(name string) *Option {
	for i := range r.TargetArgs {
		if r.TargetArgs[i].Name == name {
			return &r.TargetArgs[i]
		}
	}
	return nil
}

var genericNames = map[string]string{
	"-s": "-s", "--source": "-s", "--src": "-s",
	"-d": "-d", "--destination": "-d", "--dst": "-d",
	"-p": "-p", "--protocol": "-p",
	"-i": "-i", "--in-interface": "-i",
	"-o": "-o", "--out-interface": "-o",
	"-f": "-f", "--fragment": "-f",
}

type token struct {
	text   string
	quoted bool
}

// tokenize splits a line as iptables-restore does: whitespace separates,
// double quotes group, and a backslash escapes the next character inside
// quotes.
func tokenize(line string) ([]token, error) {
	var toks []token
	var cur strings.Builder
	inTok, inQuote, quoted := false, false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case inQuote && c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			inQuote = !inQuote
			inTok, quoted = true, true
		case !inQuote && (c == ' ' || c == '\t'):
			if inTok {
				toks = append(toks, token{cur.String(), quoted})
				cur.Reset()
				inTok, quoted = false, false
			}
		default:
			cur.WriteByte(c)
			inTok = true
		}
	}
	if inQuote {
		return nil, fmt.Errorf("unterminated quote")
	}
	if inTok {
		toks = append(toks, token{cur.String(), quoted})
	}
	return toks, nil
}

// ParseRule parses rule arguments ("-d 10.0.0.1/32 -p tcp -m tcp --dport 80
// -j SWY-SVC-...").
func ParseRule(text string) (*Rule, error) {
	toks, err := tokenize(text)
	if err != nil {
		return nil, err
	}
	return parseRuleTokens(strings.TrimSpace(text), toks)
}

func parseRuleTokens(text string, toks []token) (*Rule, error) {
	r := &Rule{Text: text}
	const (
		inGeneric = iota
		inMatch
		inTarget
	)
	section := inGeneric
	negate := false
	var proto string
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		if !t.quoted && t.text == "!" {
			negate = true
			continue
		}
		if !isOpt(t) {
			return nil, fmt.Errorf("unexpected argument %q", t.text)
		}
		var vals []string
		vals, i = optionValues(toks, i, &negate)
		name := t.text
		switch {
		case name == "-m" || name == "--match":
			if len(vals) != 1 {
				return nil, fmt.Errorf("-m needs one module name")
			}
			r.Matches = append(r.Matches, Match{Module: vals[0]})
			section = inMatch
		case name == "-j" || name == "--jump" || name == "-g" || name == "--goto":
			if len(vals) != 1 {
				return nil, fmt.Errorf("%s needs one target", name)
			}
			if r.Target != "" {
				return nil, fmt.Errorf("more than one target")
			}
			r.Target = vals[0]
			r.Goto = name == "-g" || name == "--goto"
			section = inTarget
		case section != inTarget && genericNames[name] != "":
			g := genericNames[name]
			if g != "-f" && len(vals) != 1 {
				return nil, fmt.Errorf("%s needs one value", name)
			}
			if g == "-p" {
				proto = strings.ToLower(vals[0])
			}
			r.Generic = append(r.Generic, Option{Name: g, Values: vals, Negated: negate})
		case section == inTarget:
			r.TargetArgs = append(r.TargetArgs, Option{Name: name, Values: vals, Negated: negate})
		case section == inMatch:
			m := &r.Matches[len(r.Matches)-1]
			m.Options = append(m.Options, Option{Name: name, Values: vals, Negated: negate})
		default:
			// An option before any -m: implicit protocol match ("-p tcp --dport 80").
			if proto == "" {
				return nil, fmt.Errorf("unknown option %q", name)
			}
			r.Matches = append(r.Matches, Match{Module: proto, Options: []Option{{Name: name, Values: vals, Negated: negate}}})
			section = inMatch
		}
		negate = false
	}
	if negate {
		return nil, fmt.Errorf("dangling \"!\"")
	}
	return r, nil
}

// isOpt reports whether a token is an option name.
func isOpt(t token) bool { return !t.quoted && len(t.text) > 1 && t.text[0] == '-' }

// optionValues collects the values of the option at toks[i] and returns
// them with the index of its last value. An old-style negation after the
// option name ("-s ! addr") sets negate.
func optionValues(toks []token, i int, negate *bool) ([]string, int) {
	var vals []string
	j := i + 1
	for ; j < len(toks); j++ {
		if isOpt(toks[j]) {
			break
		}
		if !toks[j].quoted && toks[j].text == "!" {
			if len(vals) == 0 && j+1 < len(toks) && !isOpt(toks[j+1]) {
				*negate = true
				continue
			}
			break
		}
		vals = append(vals, toks[j].text)
	}
	return vals, j - 1
}

// Generic returns the named generic option (-s, -d, -p, -i, -o), or nil.
func (r *Rule) GenericOption(name string) *Option {
	for i := range r.Generic {
		if r.Generic[i].Name == name {
			return &r.Generic[i]
		}
	}
	return nil
}
