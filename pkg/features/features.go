// Package features reads kube-proxy's feature gates (--feature-gates and a
// config file's featureGates) the way kube-proxy v1.36 does: every gate
// kube-proxy knows is accepted (the list in known.go is generated from
// kube-proxy itself), an unknown gate or a locked gate set against its lock
// is an error, and setting a GA or deprecated gate is a warning. Only the
// gates that change what an iptables proxy does are honoured; the others are
// named in one warning, so nothing is ignored silently.
package features

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Spec is what kube-proxy knows about one gate.
type Spec struct {
	Default bool
	// Stage is "ALPHA", "BETA", "DEPRECATED" or "" (GA).
	Stage  string
	Locked bool
}

// Gates switchyard honours.
const (
	// AllowServiceExternalIPs (GA, default true): when false, no rules are
	// written for spec.externalIPs, as kube-proxy does.
	AllowServiceExternalIPs = "AllowServiceExternalIPs"
)

// honoured are the gates that change switchyard's behaviour. Gates whose
// feature switchyard always has (it is GA and locked on in kube-proxy)
// need not be listed: setting them to their lock is accepted quietly.
var honoured = map[string]bool{AllowServiceExternalIPs: true}

// Gates is a parsed, validated set of gate values.
type Gates struct {
	set map[string]bool
	// Warnings are the lines kube-proxy would warn with (GA or deprecated
	// gates set) plus one naming the gates that do not apply to switchyard.
	Warnings []string
}

// Enabled reports a gate's value: as set, else its default (false for an
// unknown name).
func (g Gates) Enabled(name string) bool {
	if v, ok := g.set[name]; ok {
		return v
	}
	return known[name].Default
}

// Known reports whether kube-proxy v1.36 knows the gate.
func Known(name string) bool { _, ok := known[name]; return ok }

// ParseFlag reads --feature-gates' "Name=bool,Name=bool" form into a map,
// as kube-proxy's flag does (a value that is not a bool is an error).
func ParseFlag(s string) (map[string]bool, error) {
	out := map[string]bool{}
	for _, kv := range strings.Split(s, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("missing bool value for %s", k)
		}
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return nil, fmt.Errorf("invalid value of %s=%s, err: %v", k, v, err)
		}
		out[strings.TrimSpace(k)] = b
	}
	return out, nil
}

// New validates values as kube-proxy's gate registry does: an unknown gate
// and a locked gate set to the other value are errors (with kube-proxy's
// wording); AllAlpha and AllBeta set every gate of their stage that is not
// set explicitly.
func New(values map[string]bool) (Gates, error) {
	g := Gates{set: map[string]bool{}}
	names := make([]string, 0, len(values))
	for n := range values {
		names = append(names, n)
	}
	sort.Strings(names)
	var notApplying []string
	for _, n := range names {
		v := values[n]
		spec, ok := known[n]
		if !ok {
			return Gates{}, fmt.Errorf("unrecognized feature gate: %s", n)
		}
		if spec.Locked && v != spec.Default {
			return Gates{}, fmt.Errorf("cannot set feature gate %v to %v, feature is locked to %v", n, v, spec.Default)
		}
		g.set[n] = v
		switch spec.Stage {
		case "":
			if n != "AllAlpha" && n != "AllBeta" {
				g.Warnings = append(g.Warnings, fmt.Sprintf("Setting GA feature gate %s=%t. It will be removed in a future release.", n, v))
			}
		case "DEPRECATED":
			g.Warnings = append(g.Warnings, fmt.Sprintf("Setting deprecated feature gate %s=%t. It will be removed in a future release.", n, v))
		}
		if !honoured[n] && (!spec.Locked || v != spec.Default) {
			notApplying = append(notApplying, fmt.Sprintf("%s=%t", n, v))
		}
	}
	for stage, all := range map[string]string{"ALPHA": "AllAlpha", "BETA": "AllBeta"} {
		v, ok := values[all]
		if !ok {
			continue
		}
		for n, spec := range known {
			if _, explicit := values[n]; !explicit && spec.Stage == stage && !spec.Locked {
				g.set[n] = v
			}
		}
	}
	if len(notApplying) > 0 {
		g.Warnings = append(g.Warnings, "these feature gates do not change what switchyard does and are ignored: "+strings.Join(notApplying, ", "))
	}
	return g, nil
}
