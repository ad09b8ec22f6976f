package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// Owner decides which chains a cleanup removes.
type Owner func(chain string) bool

// Prefix owns every chain starting with p.
func Prefix(p string) Owner { return func(c string) bool { return strings.HasPrefix(c, p) } }

// KubeProxyChains owns upstream kube-proxy's iptables-mode chains, by their
// exact names and per-Service prefixes (KUBE-XLB- from before v1.24 too),
// and nothing else: kubelet's KUBE-FIREWALL and KUBE-KUBELET-CANARY and
// other tools' KUBE-* chains (kube-router's KUBE-ROUTER-*, ...) stay.
func KubeProxyChains(c string) bool {
	switch c {
	case "KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-FORWARD",
		"KUBE-EXTERNAL-SERVICES", "KUBE-PROXY-FIREWALL", "KUBE-PROXY-CANARY":
		return true
	}
	for _, p := range []string{"KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-", "KUBE-XLB-"} {
		if strings.HasPrefix(c, p) {
			return true
		}
	}
	return false
}

// CleanupText returns restore input that removes, from one table's save
// output, every chain owned and every rule elsewhere that jumps to one, and
// nothing else. It is empty when there is nothing to remove.
func CleanupText(table string, save []byte, owned Owner) string {
	chains, jumps := ScanSave(save)
	var ours []string
	for _, c := range chains {
		if owned(c) {
			ours = append(ours, c)
		}
	}
	var b strings.Builder
	for _, j := range jumps {
		if !owned(j.Chain) && owned(j.Target) {
			fmt.Fprintf(&b, "-D %s %s\n", j.Chain, j.Rule)
		}
	}
	if len(ours) == 0 && b.Len() == 0 {
		return ""
	}
	var out strings.Builder
	w := NewRestoreWriter(&out)
	w.Table(table)
	for _, c := range ours {
		w.DeclareChain(c)
	}
	out.WriteString(b.String())
	for _, c := range ours {
		w.DeleteChain(c)
	}
	w.Commit()
	return out.String()
}

// SavedJump is a rule in save output with a -j or -g target.
type SavedJump struct {
	Chain  string
	Target string
	// Rule is the rule's arguments as saved, usable with -D.
	Rule string
}

// ScanSave lists the chains in save output and every rule with a target,
// without parsing matches: foreign rules may use any extension.
func ScanSave(save []byte) ([]string, []SavedJump) {
	var chains []string
	var jumps []SavedJump
	for _, line := range strings.Split(string(save), "\n") {
		switch {
		case strings.HasPrefix(line, ":"):
			if f := strings.Fields(line[1:]); len(f) > 0 {
				chains = append(chains, f[0])
			}
		case strings.HasPrefix(line, "-A "):
			chain, rule, _ := strings.Cut(line[3:], " ")
			toks, err := tokenize(rule)
			if err != nil {
				continue
			}
			for i := 0; i+1 < len(toks); i++ {
				if !toks[i].quoted && (toks[i].text == "-j" || toks[i].text == "-g" || toks[i].text == "--jump" || toks[i].text == "--goto") {
					jumps = append(jumps, SavedJump{Chain: chain, Target: toks[i+1].text, Rule: rule})
				}
			}
		}
	}
	return chains, jumps
}

// HasSavedJump reports whether saved rules hold the jump exactly.
func HasSavedJump(saved []SavedJump, j Jump) bool {
	want := j.Args()
	for _, s := range saved {
		if s.Chain != j.Chain || s.Target != j.Target {
			continue
		}
		toks, err := tokenize(s.Rule)
		if err != nil || len(toks) != len(want) {
			continue
		}
		same := true
		for i, t := range toks {
			same = same && t.text == want[i]
		}
		if same {
			return true
		}
	}
	return false
}

// CleanupTables are the tables cleanup looks in.
var CleanupTables = []string{"nat", "filter", "mangle", "raw"}

// Cleanup removes every owned chain, and the jumps to them, from every
// table of this runner's backend and family.
func (r *Runner) Cleanup(ctx context.Context, owned Owner) (int, error) {
	removed := 0
	var errs []error
	for _, t := range CleanupTables {
		save, err := r.Save(ctx, t)
		if err != nil {
			// A table the kernel does not have is fine.
			continue
		}
		text := CleanupText(t, save, owned)
		if text == "" {
			continue
		}
		if err := r.Restore(ctx, []byte(text)); err != nil {
			errs = append(errs, fmt.Errorf("table %s: %w", t, err))
			continue
		}
		removed += bytes.Count([]byte(text), []byte("\n-X "))
	}
	return removed, errors.Join(errs...)
}

// AvailableRunners returns a runner for every backend and family installed
// on this host, for cleanup, which must find rules wherever they are.
func AvailableRunners(ctx context.Context) []*Runner {
	var out []*Runner
	for _, fam := range []Family{IPv4, IPv6} {
		for _, be := range []Backend{BackendLegacy, BackendNFT} {
			cmd, _, _ := binaries(fam, be)
			if _, err := exec.LookPath(cmd); err != nil {
				continue
			}
			if r, err := NewRunner(ctx, fam, be); err == nil && r.backend == be {
				out = append(out, r)
			}
		}
	}
	if len(out) == 0 {
		if r, err := NewRunner(ctx, IPv4, BackendAuto); err == nil {
			out = append(out, r)
		}
	}
	return out
}

// ErrNoNFT is returned by CleanupKubeProxyNFTables on a host without nft.
var ErrNoNFT = errors.New("nft is not installed: if kube-proxy ran in nftables mode, delete its tables by hand: nft delete table ip kube-proxy; nft delete table ip6 kube-proxy")

// CleanupKubeProxyNFTables deletes upstream kube-proxy's nftables-mode
// tables ("ip kube-proxy", "ip6 kube-proxy") with the nft tool. It returns
// the tables removed; a host without nft reports what to run by hand.
func CleanupKubeProxyNFTables(ctx context.Context) ([]string, error) {
	nft, err := exec.LookPath("nft")
	if err != nil {
		return nil, ErrNoNFT
	}
	var removed []string
	var errs []error
	for _, family := range []string{"ip", "ip6"} {
		if exec.CommandContext(ctx, nft, "list", "table", family, "kube-proxy").Run() != nil {
			continue // no such table
		}
		if out, err := exec.CommandContext(ctx, nft, "delete", "table", family, "kube-proxy").CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("nft delete table %s kube-proxy: %w: %s", family, err, out))
			continue
		}
		removed = append(removed, family+" kube-proxy")
	}
	return removed, errors.Join(errs...)
}
