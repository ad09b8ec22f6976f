package iptables

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/switchyard-proxy/switchyard/pkg/nfacct"
)

// ChainDiff is how one chain differs between the live tables and the
// desired ones.
type ChainDiff struct {
	Table   string
	Chain   string
	Kind    string   // "new", "stale" or "changed"
	Removed []string // live rules not wanted
	Added   []string // wanted rules not live
}

// chainRules maps table -> chain -> rules ("-A ..." lines) for chains with
// the prefix, and for built-in chains only the rules jumping to one.
func chainRules(save, prefix string) map[string]map[string][]string {
	out := map[string]map[string][]string{}
	table := ""
	for _, line := range strings.Split(save, "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
			if out[table] == nil {
				out[table] = map[string][]string{}
			}
		case strings.HasPrefix(line, ":"+prefix):
			name := strings.Fields(line[1:])[0]
			if _, ok := out[table][name]; !ok {
				out[table][name] = []string{}
			}
		case strings.HasPrefix(line, "-A "):
			chain, rest, _ := strings.Cut(line[3:], " ")
			if strings.HasPrefix(chain, prefix) || strings.Contains(rest, "-j "+prefix) || strings.Contains(rest, "-g "+prefix) {
				out[table][chain] = append(out[table][chain], line)
			}
		}
	}
	return out
}

// DiffSaves compares two iptables-save outputs (the live tables and the
// desired ones, both as the tool prints them) over the chains with the
// prefix and the jumps into them.
func DiffSaves(live, desired, prefix string) []ChainDiff {
	l, d := chainRules(live, prefix), chainRules(desired, prefix)
	var out []ChainDiff
	tables := map[string]bool{}
	for t := range l {
		tables[t] = true
	}
	for t := range d {
		tables[t] = true
	}
	for t := range tables {
		chains := map[string]bool{}
		for c := range l[t] {
			chains[c] = true
		}
		for c := range d[t] {
			chains[c] = true
		}
		for c := range chains {
			lr, inLive := l[t][c]
			dr, inDesired := d[t][c]
			diff := ChainDiff{Table: t, Chain: c}
			switch {
			case !inLive:
				diff.Kind, diff.Added = "new", dr
			case !inDesired && strings.HasPrefix(c, prefix):
				diff.Kind, diff.Removed = "stale", lr
			case !inDesired:
				diff.Kind, diff.Removed = "changed", lr
			default:
				diff.Kind = "changed"
				diff.Removed, diff.Added = minus(lr, dr), minus(dr, lr)
				if len(diff.Removed) == 0 && len(diff.Added) == 0 && strings.Join(lr, "\n") == strings.Join(dr, "\n") {
					continue
				}
			}
			out = append(out, diff)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Table != out[j].Table {
			return out[i].Table < out[j].Table
		}
		return out[i].Chain < out[j].Chain
	})
	return out
}

func minus(a, b []string) []string {
	in := map[string]int{}
	for _, x := range b {
		in[x]++
	}
	var out []string
	for _, x := range a {
		if in[x] > 0 {
			in[x]--
			continue
		}
		out = append(out, x)
	}
	return out
}

// CanonicalSave loads restore text into a throwaway network namespace with
// this runner's backend and family and returns iptables-save's view of it,
// so rules we render compare with live rules in the tool's own spelling.
// Needs root; leaves nothing behind.
func (r *Runner) CanonicalSave(ctx context.Context, restoreText string) (string, error) {
	name := fmt.Sprintf("swy-canon-%d", os.Getpid())
	_ = exec.Command("ip", "netns", "del", name).Run()
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", name).CombinedOutput(); err != nil {
		return "", fmt.Errorf("creating a scratch namespace: %w: %s", err, out)
	}
	defer func() { _ = exec.Command("ip", "netns", "del", name).Run() }()
	// A rule naming an nfacct counter loads only where the counter exists.
	if err := ensureNFAcctIn(name, nfacctNames(restoreText)); err != nil {
		return "", err
	}
	restore := exec.CommandContext(ctx, "ip", "netns", "exec", name, r.restore, "--noflush")
	restore.Stdin = strings.NewReader(restoreText)
	if out, err := restore.CombinedOutput(); err != nil {
		return "", fmt.Errorf("loading the desired rules: %w: %s", err, out)
	}
	var b bytes.Buffer
	for _, t := range []string{"nat", "filter"} {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", name, r.save, "-t", t).Output()
		if err != nil {
			return "", fmt.Errorf("reading the desired rules: %w", err)
		}
		b.Write(out)
	}
	return b.String(), nil
}

// nfacctNames lists the nfacct counters the rules name.
func nfacctNames(text string) []string {
	seen := map[string]bool{}
	var out []string
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "--nfacct-name" && !seen[f[i+1]] {
				seen[f[i+1]] = true
				out = append(out, f[i+1])
			}
		}
	}
	return out
}

// ensureNFAcctIn creates nfacct counters inside a named network namespace,
// from a thread that enters it and ends with the call.
func ensureNFAcctIn(netnsName string, names []string) error {
	if len(names) == 0 {
		return nil
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		fd, err := unix.Open("/var/run/netns/"+netnsName, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering %s: %w", netnsName, err)
			return
		}
		for _, n := range names {
			if err := (nfacct.Netlink{}).Ensure(n); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	return <-errc
}
