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
	"slices"
	"strings"
	"sync"
	"time"

	goipt "github.com/coreos/go-iptables/iptables"
	"k8s.io/klog/v2"
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

// Present reports whether the chains exist and every jump is in place: one
// call per chain asked for, and one listing per built-in chain.
//
// On legacy, a table whose summary is the one it had when last seen intact
// is not listed again (see verified): in a quiet node the check then costs
// a system call per table instead of loading the whole table per chain.
func (r *Runner) Present(ctx context.Context, chains map[string][]string, jumps []Jump) (bool, error) {
	var tables []string
	for t := range chains {
		tables = append(tables, t)
	}
	for _, j := range jumps {
		if !slices.Contains(tables, j.Table) {
			tables = append(tables, j.Table)
		}
	}
	quick, before := r.quickCheck(tables)
	if quick {
		return true, nil
	}
	ok, err := r.present(chains, jumps)
	if ok && err == nil && before != nil {
		r.mu.Lock()
		r.verified = before
		r.mu.Unlock()
	}
	return ok, err
}

// quickCheck says whether every table still has its verified summary. If
// not, it returns the summaries read now (nil off legacy or when one could
// not be read), to be recorded should the listings that follow pass: read
// before them, so a change made meanwhile shows up next time.
func (r *Runner) quickCheck(tables []string) (bool, map[string]tableSummary) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.backend != BackendLegacy {
		r.fullChecks++ // nf_tables lists one chain without loading the rest
		return false, nil
	}
	r.checks++
	now := map[string]tableSummary{}
	same := r.checks%fullCheckEvery != 0
	for _, t := range tables {
		s, err := legacySummary(r.family, t)
		if err != nil {
			r.fullChecks++
			return false, nil
		}
		now[t] = s
		if v, ok := r.verified[t]; !ok || v != s {
			same = false
		}
	}
	if same {
		r.quickChecks++
		return true, nil
	}
	r.fullChecks++
	return false, now
}

// carryVerified, called with mu held before a restore of ours, returns
// what to run after it: each verified table that had not changed since it
// was verified stays verified with its new summary (what changed is our own
// doing); any other forgets its summary, so the next check lists it.
func (r *Runner) carryVerified() func() {
	if len(r.verified) == 0 {
		return func() {}
	}
	var unchanged []string
	for t, v := range r.verified {
		if s, err := legacySummary(r.family, t); err == nil && s == v {
			unchanged = append(unchanged, t)
		}
	}
	return func() {
		carried := map[string]tableSummary{}
		for _, t := range unchanged {
			if s, err := legacySummary(r.family, t); err == nil {
				carried[t] = s
			}
		}
		r.verified = carried
	}
}

// Checks returns how many integrity checks listed the chains and how many
// the legacy table summaries answered without listing.
func (r *Runner) Checks() (full, quick int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fullChecks, r.quickChecks
}

func (r *Runner) present(chains map[string][]string, jumps []Jump) (bool, error) {
	for table, names := range chains {
		for _, c := range names {
			ok, err := r.ipt.ChainExists(table, c)
			if err != nil {
				return false, wrapBusy(err)
			}
			if !ok {
				return false, nil
			}
		}
	}
	for _, g := range groupJumps(jumps) {
		have, err := r.listChain(g.table, g.chain)
		if err != nil {
			return false, fmt.Errorf("listing %s/%s: %w", g.table, g.chain, wrapBusy(err))
		}
		for _, j := range g.jumps {
			if !HasSavedJump(have, j) {
				return false, nil
			}
		}
	}
	return true, nil
}

// listChain returns the jumps of one chain as iptables -S prints them (the
// same lines as iptables-save). It does not take mu (see there).
func (r *Runner) listChain(table, chain string) ([]SavedJump, error) {
	lines, err := r.ipt.List(table, chain)
	if err != nil {
		return nil, err
	}
	_, jumps := ScanSave([]byte(strings.Join(lines, "\n")))
	return jumps, nil
}

type jumpGroup struct {
	table, chain string
	jumps        []Jump
}

// groupJumps groups jumps by their built-in chain, keeping the order of
// first appearance and, within a chain, the given order.
func groupJumps(jumps []Jump) []jumpGroup {
	var groups []jumpGroup
	for _, j := range jumps {
		i := slices.IndexFunc(groups, func(g jumpGroup) bool { return g.table == j.Table && g.chain == j.Chain })
		if i < 0 {
			groups = append(groups, jumpGroup{table: j.Table, chain: j.Chain})
			i = len(groups) - 1
		}
		groups[i].jumps = append(groups[i].jumps, j)
	}
	return groups
}

// DryRun logs what it would apply and applies nothing. Save returns empty
// tables, as on a fresh node.
type DryRun struct {
	Logger klog.Logger
	Family Family
}

func (d *DryRun) Restore(_ context.Context, text []byte) error {
	d.Logger.Info("Dry run: would apply iptables-restore batch", "family", d.Family, "bytes", len(text), "batch", string(text))
	return nil
}

func (d *DryRun) TestRestore(context.Context, []byte) error { return nil }

func (d *DryRun) Save(_ context.Context, table string) ([]byte, error) {
	return []byte("*" + table + "\nCOMMIT\n"), nil
}

func (d *DryRun) EnsureJumps(_ context.Context, jumps []Jump) error {
	for _, j := range jumps {
		d.Logger.V(2).Info("Dry run: would ensure jump", "table", j.Table, "chain", j.Chain, "args", strings.Join(j.Args(), " "))
	}
	return nil
}

func (d *DryRun) Present(context.Context, map[string][]string, []Jump) (bool, error) {
	return true, nil
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
