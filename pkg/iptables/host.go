// Package iptables owns everything that executes iptables on the host
// (iptables-restore and iptables-save for both backends and both IP
// families, idempotent jump rules through github.com/coreos/go-iptables,
// backend detection), plus the pure parts built around its text format: the
// ruleset parser, an in-memory ruleset with iptables-restore semantics, and
// the packet tracer used by tests and by `switchyard explain`.
//
// It knows nothing about Services: callers hand it restore text and jump
// rules. It must not import the proxier or watch packages.
package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"time"

	goipt "github.com/coreos/go-iptables/iptables"
)

// Family is an IP family.
type Family string

const (
	IPv4 Family = "IPv4"
	IPv6 Family = "IPv6"
)

// Backend is the iptables backend: the legacy xtables kernel API or
// nf_tables (iptables-nft).
type Backend string

const (
	BackendAuto   Backend = "auto"
	BackendLegacy Backend = "legacy"
	BackendNFT    Backend = "nft"
)

// Jump is a rule in a built-in chain that sends traffic into one of ours.
type Jump struct {
	Table   string
	Chain   string // built-in chain, e.g. PREROUTING
	Target  string // our chain
	Comment string
	// Extra match arguments placed before the comment, e.g. conntrack state.
	Extra []string
}

// Args returns the rule arguments of the jump, as for iptables -I.
func (j Jump) Args() []string {
	args := append([]string{}, j.Extra...)
	return append(args, "-m", "comment", "--comment", j.Comment, "-j", j.Target)
}

// Interface is what the sync loop needs from the host, for one IP family.
type Interface interface {
	// Restore applies restore text with --noflush.
	Restore(ctx context.Context, text []byte) error
	// TestRestore checks restore text with --test: parsed and built, never
	// committed.
	TestRestore(ctx context.Context, text []byte) error
	// Save returns iptables-save output of one table.
	Save(ctx context.Context, table string) ([]byte, error)
	// EnsureJumps makes each jump present in its built-in chain; jumps are
	// kept first in their chain, in the order given. The target chains
	// must exist.
	EnsureJumps(ctx context.Context, jumps []Jump) error
	// Present reports whether the chains exist and the jumps are in place.
	Present(ctx context.Context, chains map[string][]string, jumps []Jump) (bool, error)
}

// Runner executes the real iptables binaries of one backend and family.
type Runner struct {
	family  Family
	backend Backend
	restore string
	save    string
	ipt     *goipt.IPTables
	reason  string
	// mu serialises our own writes and guards the fields below; the
	// xtables lock (-w) guards against other programs. Read-only calls (the
	// integrity check's listings) do not take it: while another program
	// holds the xtables lock they wait for it, and a sync must not wait
	// behind them.
	mu sync.Mutex
	// verified holds, on legacy, each table's summary (tableSummary) as it
	// was when the table was last seen intact: read before a check whose
	// listings passed, and carried across our own restores that found the
	// table unchanged since. While a table keeps that summary, Present does
	// not list it again (a listing loads the whole table), except on every
	// fullCheckEvery-th check. Guarded by mu.
	verified map[string]tableSummary
	checks   int
	// fullChecks and quickChecks count the checks that listed the chains
	// and those the summaries answered.
	fullChecks, quickChecks int
}

// fullCheckEvery is how often Present lists the chains even though no
// table changed (a rule replaced by one of the same size at the same place
// leaves a table's summary as it was).
const fullCheckEvery = 10

// binaries returns the iptables, -save and -restore names of a backend.
func binaries(family Family, backend Backend) (string, string, string) {
	base := "iptables"
	if family == IPv6 {
		base = "ip6tables"
	}
	if backend == BackendLegacy || backend == BackendNFT {
		base += "-" + string(backend)
	}
	return base, base + "-save", base + "-restore"
}

// NewRunner returns a runner for the given family, detecting the backend
// when asked for auto.
func NewRunner(ctx context.Context, family Family, backend Backend) (*Runner, error) {
	reason := "forced"
	if backend == "" || backend == BackendAuto {
		backend, reason = DetectBackendWithReason(ctx, family)
	}
	cmd, save, restore := binaries(family, backend)
	path, err := exec.LookPath(cmd)
	if err != nil {
		// Hosts with only the plain names (no -legacy/-nft variants).
		plain, psave, prestore := binaries(family, "")
		if p, err2 := exec.LookPath(plain); err2 == nil {
			path, save, restore = p, psave, prestore
		} else {
			return nil, fmt.Errorf("%s not found: %w", cmd, err)
		}
	}
	proto := goipt.ProtocolIPv4
	if family == IPv6 {
		proto = goipt.ProtocolIPv6
	}
	ipt, err := goipt.New(goipt.IPFamily(proto), goipt.Path(path), goipt.Timeout(10))
	if err != nil {
		return nil, fmt.Errorf("using %s: %w", path, err)
	}
	return &Runner{family: family, backend: backend, restore: restore, save: save, ipt: ipt, reason: reason}, nil
}

// BackendReason says why the backend was chosen.
func (r *Runner) BackendReason() string { return r.reason }

// Backend returns the backend in use.
func (r *Runner) Backend() Backend { return r.backend }

// Family returns the IP family.
func (r *Runner) Family() Family { return r.family }

// DetectBackend picks the backend the host already uses: the one holding
// more rules (kube-proxy's and ours count most), nft when both are empty or
// only one is installed.
func DetectBackend(ctx context.Context, family Family) Backend {
	b, _ := DetectBackendWithReason(ctx, family)
	return b
}

// DetectBackendWithReason is DetectBackend that also says why, for the log.
func DetectBackendWithReason(ctx context.Context, family Family) (Backend, string) {
	_, legacySave, _ := binaries(family, BackendLegacy)
	_, nftSave, _ := binaries(family, BackendNFT)
	count := func(bin string) int {
		if _, err := exec.LookPath(bin); err != nil {
			return -1
		}
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin).Output()
		if err != nil {
			return -1
		}
		return scoreSave(out)
	}
	legacy := count(legacySave)
	nft := count(nftSave)
	if legacy < 0 && nft < 0 {
		// Only plain iptables: ask it which it is.
		plain, _, _ := binaries(family, "")
		out, _ := exec.CommandContext(ctx, plain, "--version").Output()
		why := fmt.Sprintf("only %s is installed: %s", plain, strings.TrimSpace(string(out)))
		if strings.Contains(string(out), "legacy") {
			return BackendLegacy, why
		}
		return BackendNFT, why
	}
	why := fmt.Sprintf("rule score legacy=%d nft=%d (-1: not usable)", legacy, nft)
	if legacy > nft {
		return BackendLegacy, why
	}
	return BackendNFT, why
}

// scoreSave counts the rules in save output, weighting the chains of a
// service proxy heavily: they tell which backend the node's proxy uses.
func scoreSave(out []byte) int {
	n := 0
	for _, line := range bytes.Split(out, []byte("\n")) {
		switch {
		case bytes.HasPrefix(line, []byte(":KUBE-")), bytes.HasPrefix(line, []byte(":SWY-")):
			n += 1000
		case bytes.HasPrefix(line, []byte("-A ")):
			n++
		}
	}
	return n
}

// Probe checks that this family's nat table can be used at all (ip6tables
// on a kernel without IPv6 NAT fails here), cheaply.
func (r *Runner) Probe() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	ok, err := r.ipt.ChainExists("nat", "PREROUTING")
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("no nat PREROUTING chain")
	}
	return nil
}

// Restore runs iptables-restore --noflush with the xtables lock.
func (r *Runner) Restore(ctx context.Context, text []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.carryVerified()()
	cmd := exec.CommandContext(ctx, r.restore, "-w", "5", "--noflush")
	cmd.Stdin = bytes.NewReader(text)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return wrapBusy(fmt.Errorf("%s: %w: %s", r.restore, err, strings.TrimSpace(stderr.String())))
	}
	return nil
}

// StreamRestorer is a host that takes restore text as it is written, so a
// large restore never has to be held in memory at once.
type StreamRestorer interface {
	// RestoreStream runs one restore (--noflush) whose input is what write
	// writes. If write fails, the restore is killed before it reads the end
	// of its input, so no table whose COMMIT was not yet written changes.
	RestoreStream(ctx context.Context, write func(io.Writer) error) error
}

// RestoreStream runs iptables-restore --noflush with the xtables lock,
// feeding it from write.
func (r *Runner) RestoreStream(ctx context.Context, write func(io.Writer) error) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.carryVerified()()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, r.restore, "-w", "5", "--noflush")
	in, err := cmd.StdinPipe()
	if err != nil {
		return fmt.Errorf("%s: %w", r.restore, err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: %w", r.restore, err)
	}
	if werr := write(in); werr != nil {
		cancel() // killed before it sees the end of its input
		_ = in.Close()
		_ = cmd.Wait()
		return wrapBusy(fmt.Errorf("%s: writing its input: %w: %s", r.restore, werr, strings.TrimSpace(stderr.String())))
	}
	if err := in.Close(); err != nil {
		cancel()
		_ = cmd.Wait()
		return fmt.Errorf("%s: %w", r.restore, err)
	}
	if err := cmd.Wait(); err != nil {
		return wrapBusy(fmt.Errorf("%s: %w: %s", r.restore, err, strings.TrimSpace(stderr.String())))
	}
	return nil
}

// TestRestore runs iptables-restore --test --noflush: nothing is committed.
func (r *Runner) TestRestore(ctx context.Context, text []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	cmd := exec.CommandContext(ctx, r.restore, "-w", "5", "--noflush", "--test")
	cmd.Stdin = bytes.NewReader(text)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return wrapBusy(fmt.Errorf("%s --test: %w: %s", r.restore, err, strings.TrimSpace(stderr.String())))
	}
	return nil
}

// Save runs iptables-save for one table.
func (r *Runner) Save(ctx context.Context, table string) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cmd := exec.CommandContext(ctx, r.save, "-t", table)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s -t %s: %w: %s", r.save, table, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// SaveTables concatenates iptables-save output of several tables.
func (r *Runner) SaveTables(ctx context.Context, tables ...string) ([]byte, error) {
	var b bytes.Buffer
	for _, t := range tables {
		out, err := r.Save(ctx, t)
		if err != nil {
			return nil, err
		}
		b.Write(out)
	}
	return b.Bytes(), nil
}

// EnsureJumps inserts missing jumps at the top of their chains. Jumps are
// visited last-first, so that inserting each at position 1 leaves them in
// the given order.
//
// Each built-in chain is listed once (iptables -S CHAIN) rather than each
// jump checked with -C: on legacy every iptables call loads the whole
// table, about half a second at 10,000 Services, so the calls are what
// costs. The targets are ours and exist (the restore before this call
// declares every top-level chain); a missing target fails the insert, and
// the next, full, sync creates it.
func (r *Runner) EnsureJumps(ctx context.Context, jumps []Jump) error {
	var errs []error
	for _, g := range groupJumps(jumps) {
		have, err := r.listChain(g.table, g.chain)
		if err != nil {
			errs = append(errs, fmt.Errorf("listing %s/%s: %w", g.table, g.chain, err))
			continue
		}
		for i := len(g.jumps) - 1; i >= 0; i-- {
			j := g.jumps[i]
			if HasSavedJump(have, j) {
				continue
			}
			r.mu.Lock()
			delete(r.verified, j.Table)
			err := r.ipt.Insert(j.Table, j.Chain, 1, j.Args()...)
			r.mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("inserting jump %s/%s -> %s: %w", j.Table, j.Chain, j.Target, err))
			}
		}
	}
	return errors.Join(errs...)
}

// ErrLockBusy marks a call that gave up waiting for the xtables lock:
// another program held it longer than we wait. It says nothing about our
// rules, so an integrity check that meets it is inconclusive, not failed.
var ErrLockBusy = errors.New("another program holds the xtables lock")

// wrapBusy marks err with ErrLockBusy when iptables said it could not get
// the xtables lock.
func wrapBusy(err error) error {
	if err == nil || errors.Is(err, ErrLockBusy) {
		return err
	}
	if msg := err.Error(); strings.Contains(msg, "holding the xtables lock") || strings.Contains(msg, "Can't lock") {
		return fmt.Errorf("%w: %w", ErrLockBusy, err)
	}
	return err
}
