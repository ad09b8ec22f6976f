package iptables

import (
	"context"
	"fmt"
	"strings"
	"sync"
)

// Fake is an in-memory Interface for unit tests: restores are applied to a
// Ruleset with the real tool's --noflush semantics and recorded, so tests can
// check both the resulting tables and what each sync wrote.
type Fake struct {
	mu       sync.Mutex
	Rules    *Ruleset
	Restores []string
	Tests    int
	// FailRestore, when set, is returned by the next restores instead of
	// applying them.
	FailRestore error
	// Reject, when set, is asked about every restore and test: an error
	// refuses the text, as the kernel refuses a rule it cannot load.
	Reject func(text string) error
}

// NewFake returns a fake whose tables start empty (built-in chains only).
func NewFake() *Fake {
	rs := NewRuleset()
	rs.Table("nat")
	rs.Table("filter")
	return &Fake{Rules: rs}
}

// SetFailRestore makes later restores fail with err (nil: succeed again).
func (f *Fake) SetFailRestore(err error) {
	f.mu.Lock()
	f.FailRestore = err
	f.mu.Unlock()
}

func (f *Fake) Restore(_ context.Context, text []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Restores = append(f.Restores, string(text))
	if f.FailRestore != nil {
		return f.FailRestore
	}
	if f.Reject != nil {
		if err := f.Reject(string(text)); err != nil {
			return err
		}
	}
	return f.Rules.Restore(string(text), true)
}

// Tests counts TestRestore calls.
func (f *Fake) TestRestore(_ context.Context, text []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Tests++
	if f.Reject != nil {
		if err := f.Reject(string(text)); err != nil {
			return err
		}
	}
	return f.Rules.Clone().Restore(string(text), true)
}

func (f *Fake) Save(_ context.Context, table string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.Rules.Tables[table]
	if t == nil {
		return []byte("*" + table + "\nCOMMIT\n"), nil
	}
	return []byte(t.save()), nil
}

func (f *Fake) EnsureJumps(_ context.Context, jumps []Jump) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := len(jumps) - 1; i >= 0; i-- {
		j := jumps[i]
		t := f.Rules.Table(j.Table)
		if t.Chains[j.Target] == nil {
			t.Chains[j.Target] = &Chain{Name: j.Target}
			t.Order = append(t.Order, j.Target)
		}
		if f.hasJump(j) {
			continue
		}
		if err := t.command("-I " + j.Chain + " 1 " + argsText(j.Args())); err != nil {
			return fmt.Errorf("inserting jump: %w", err)
		}
	}
	return nil
}

func (f *Fake) hasJump(j Jump) bool {
	t := f.Rules.Tables[j.Table]
	if t == nil || t.Chains[j.Chain] == nil {
		return false
	}
	want := argsText(j.Args())
	for _, r := range t.Chains[j.Chain].Rules {
		if r.Text == want {
			return true
		}
	}
	return false
}

func (f *Fake) Present(_ context.Context, chains map[string][]string, jumps []Jump) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for table, names := range chains {
		t := f.Rules.Tables[table]
		for _, n := range names {
			if t == nil || t.Chains[n] == nil {
				return false, nil
			}
		}
	}
	for _, j := range jumps {
		if !f.hasJump(j) {
			return false, nil
		}
	}
	return true, nil
}

// Snapshot returns a copy of the current rules, safe to read while syncs go on.
func (f *Fake) Snapshot() *Ruleset {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.Rules.Clone()
}

// argsText quotes arguments as iptables-save would.
func argsText(args []string) string {
	n := len(args)
	for _, a := range args {
		n += len(a)
	}
	var b strings.Builder
	b.Grow(n)
	for i, a := range args {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(QuoteArg(a))
	}
	return b.String()
}

var quoteEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`)

// QuoteArg quotes one argument for restore input when it needs it.
func QuoteArg(s string) string {
	plain := s != ""
	for i := 0; plain && i < len(s); i++ {
		c := s[i]
		plain = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("_-./:,=![]", c) >= 0
	}
	if plain {
		return s
	}
	return `"` + quoteEscaper.Replace(s) + `"`
}

// ArgsText joins rule arguments into restore text, quoting where needed.
func ArgsText(args []string) string { return argsText(args) }
