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
	"context"
	"strings"

	"k8s.io/klog/v2"
)

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
