package proxier

import (
	"sort"
	"strings"
)

// ServiceView is one Service as switchyard sees it: its ports with their
// endpoints and policies, and the rules it owns, per IP family.
type ServiceView struct {
	Namespace string              `json:"namespace"`
	Name      string              `json:"name"`
	Ports     []ServicePortView   `json:"ports"`
	Rules     map[string][]string `json:"rules"` // "IPv4 nat" -> "-A CHAIN ..." lines
}

// ServicePortView is one port of a ServiceView.
type ServicePortView struct {
	*ServicePort
	Endpoints []Endpoint `json:"endpoints"`
}

// DescribeService collects a Service's model from a snapshot and its rules
// from the syncers' last rules: every rule in its own chains, and the rules
// elsewhere whose comment names it.
func DescribeService(snap *Snapshot, syncers []*Syncer, namespace, name string) ServiceView {
	v := ServiceView{Namespace: namespace, Name: name, Rules: map[string][]string{}}
	chains := map[string]bool{}
	for _, n := range snap.SortedNames() {
		if n.Namespace != namespace || n.Name != name {
			continue
		}
		sp := snap.Services[n]
		v.Ports = append(v.Ports, ServicePortView{ServicePort: sp, Endpoints: snap.Endpoints[n]})
		for _, c := range []string{ServiceChainName(n), LocalChainName(n), ExternalChainName(n), FirewallChainName(n)} {
			chains[c] = true
		}
		for _, ep := range snap.Endpoints[n] {
			chains[EndpointChainName(n, ep)] = true
		}
	}
	prefix := namespace + "/" + name
	for _, s := range syncers {
		rules := s.Rules()
		if rules == nil {
			continue
		}
		for _, t := range rules.Tables {
			key := string(s.Config.Family) + " " + t.Name
			for _, c := range t.Chains {
				for _, r := range c.Rules {
					if chains[c.Name] || mentions(r, prefix) {
						v.Rules[key] = append(v.Rules[key], "-A "+c.Name+" "+r)
					}
				}
			}
		}
	}
	for k := range v.Rules {
		sort.Strings(v.Rules[k])
	}
	return v
}

// mentions reports whether a rule's comment names the Service (exactly, or
// one of its ports), not another Service whose name merely starts the same.
func mentions(rule, svc string) bool { return Mentions(rule, svc) }

// Mentions reports whether a rule's comment names the Service "ns/name"
// (exactly, or one of its ports).
func Mentions(rule, svc string) bool {
	for _, sep := range []string{svc + ":", svc + " ", svc + "\"", svc + "\n"} {
		if strings.Contains(rule+"\n", sep) {
			return true
		}
	}
	return false
}
