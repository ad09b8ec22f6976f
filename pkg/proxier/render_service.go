package proxier

import (
	"fmt"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
)

// endpointSets are the endpoints one Service port may use on this node.
type endpointSets struct {
	// cluster: usable endpoints anywhere (Cluster traffic policy).
	cluster []Endpoint
	// local: usable endpoints on this node (Local traffic policy).
	local []Endpoint
	// any is true when the Service has usable endpoints anywhere.
	any bool
}

// usable returns the ready endpoints among eps, or, when none is ready, the
// serving-but-terminating ones (so rolling updates and drains keep working).
func usable(eps []Endpoint) []Endpoint {
	var ready, terminating []Endpoint
	for _, ep := range eps {
		switch {
		case ep.Ready:
			ready = append(ready, ep)
		case ep.Serving && ep.Terminating:
			terminating = append(terminating, ep)
		}
	}
	if len(ready) > 0 {
		return ready
	}
	return terminating
}

// categorize splits a Service port's endpoints (of one family) into the
// cluster-wide and node-local choices, each falling back to terminating
// endpoints on its own, as kube-proxy does. The cluster-wide choice honours
// topology hints (see topologyMode).
func categorize(all []Endpoint, family v1.IPFamily, node NodeInfo) endpointSets {
	eps := make([]Endpoint, 0, len(all))
	var local []Endpoint
	for _, ep := range all {
		if familyOf(ep.Addr) != family {
			continue
		}
		eps = append(eps, ep)
		if node.Name != "" && ep.NodeName == node.Name {
			local = append(local, ep)
		}
	}
	mode := topologyMode(eps, node.Name, node.Zone)
	cluster := make([]Endpoint, 0, len(eps))
	for _, ep := range eps {
		if ep.Ready && availableForTopology(ep, mode, node.Name, node.Zone) {
			cluster = append(cluster, ep)
		}
	}
	if len(cluster) == 0 {
		// No ready endpoint anywhere (a topology mode is only chosen when
		// one matches): fall back to serving-but-terminating ones.
		cluster = usable(eps)
	}
	s := endpointSets{cluster: cluster, local: usable(local)}
	s.any = len(s.cluster) > 0
	return s
}

// Topology modes chosen from EndpointSlice hints.
const (
	topologySameNode = "PreferSameNode"
	topologySameZone = "PreferSameZone"
)

// topologyMode picks how to use the hints the EndpointSlice controller set
// for spec.trafficDistribution: same-node when every ready endpoint has a
// node hint and one is for this node; otherwise same-zone when every ready
// endpoint has a zone hint and one is for this node's zone; otherwise none
// (all endpoints), as kube-proxy decides.
func topologyMode(eps []Endpoint, nodeName, zone string) string {
	anyReady := false
	allNode, forNode := true, false
	allZone, forZone := true, false
	for _, ep := range eps {
		if !ep.Ready {
			continue
		}
		anyReady = true
		if len(ep.nodeHints()) == 0 {
			allNode = false
		} else if slices.Contains(ep.nodeHints(), nodeName) {
			forNode = true
		}
		if len(ep.zoneHints()) == 0 {
			allZone = false
		} else if zone != "" && slices.Contains(ep.zoneHints(), zone) {
			forZone = true
		}
	}
	switch {
	case !anyReady:
		return ""
	case allNode && forNode:
		return topologySameNode
	case allZone && forZone:
		return topologySameZone
	}
	return ""
}

func availableForTopology(ep Endpoint, mode, nodeName, zone string) bool {
	switch mode {
	case topologySameNode:
		return slices.Contains(ep.nodeHints(), nodeName)
	case topologySameZone:
		return slices.Contains(ep.zoneHints(), zone)
	}
	return true
}

// familyAddrs keeps the addresses of one family.
func familyAddrs(addrs []netip.Addr, family v1.IPFamily) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		if familyOf(a) == family {
			out = append(out, a)
		}
	}
	return out
}

// portPlan is what one Service port gets on this node, decided from the
// Service, its endpoints and the node before a rule is written: which
// chains exist, where each kind of traffic goes, what is masqueraded, and
// what is dropped or rejected. renderServicePort then only writes it down.
type portPlan struct {
	// chains are the names of the Service port's own chains.
	chains             portChains
	vip                netip.Addr
	externalIPs, lbIPs []netip.Addr
	// sets are the endpoints the policy chains use.
	sets endpointSets
	// internal is where cluster IP traffic goes, external where traffic
	// from outside (NodePort, external and load balancer IPs) goes.
	internal, external trafficPlan
	// externalLocal: externalTrafficPolicy Local applies.
	externalLocal bool
	// extChain: SWY-EXT is written (the Service has endpoints and is
	// reachable from outside); fwChain: SWY-FW is written (source ranges).
	extChain, fwChain bool
	// clusterChain, localChain: SWY-SVC and SWY-SVL are filled with
	// endpoints.
	clusterChain, localChain bool
}

// trafficPlan is one kind of traffic's fate: the policy chain it jumps to
// when there is an endpoint for it, else the filter verdict and its reason.
type trafficPlan struct {
	chain        string // SWY-SVC or SWY-SVL; "" when it has no endpoint
	verdict, why string // REJECT (no endpoints at all) or DROP (none local)
}

// planServicePort decides a Service port's rules (false: the Service has no
// cluster IP of the family, so no rules). It is pure.
func planServicePort(snap *Snapshot, cfg RenderConfig, svc *ServicePort) (portPlan, bool) {
	name := svc.Name
	vip, ok := svc.ClusterIP(cfg.Family)
	if !ok {
		return portPlan{}, false
	}
	p := portPlan{chains: chainsOf(name), vip: vip, externalIPs: familyAddrs(svc.ExternalIPs, cfg.Family), lbIPs: familyAddrs(svc.LoadBalancerIPs, cfg.Family)}
	externallyAccessible := svc.NodePort != 0 || len(p.externalIPs) > 0 || len(p.lbIPs) > 0
	p.externalLocal = svc.ExternalPolicyLocal && externallyAccessible
	internalLocal := svc.InternalPolicyLocal

	p.sets = categorize(snap.Endpoints[name], cfg.Family, snap.Node)
	usesCluster := !internalLocal || externallyAccessible
	usesLocal := internalLocal || p.externalLocal
	if !usesLocal {
		p.sets.local = nil
	}
	if !usesCluster {
		p.sets.cluster = nil
		p.sets.any = hasUsable(snap.Endpoints[name], cfg.Family)
	}
	verdict, why := "REJECT", name.String()+" has no endpoints"
	if p.sets.any {
		verdict, why = "DROP", name.String()+" has no local endpoints"
	}
	policy := func(local bool) trafficPlan {
		switch {
		case !p.sets.any, local && len(p.sets.local) == 0:
			return trafficPlan{verdict: verdict, why: why}
		case local:
			return trafficPlan{chain: p.chains.svl}
		}
		return trafficPlan{chain: p.chains.svc}
	}
	p.internal, p.external = policy(internalLocal), policy(p.externalLocal)
	p.extChain = p.sets.any && externallyAccessible
	p.fwChain = p.sets.any && len(p.lbIPs) > 0 && len(svc.LoadBalancerSourceRanges) > 0
	p.clusterChain = len(p.sets.cluster) > 0 && usesCluster
	p.localChain = len(p.sets.local) > 0 && usesLocal
	return p, true
}

// renderServicePort writes everything one Service port needs (its SVC,
// SVL, EXT, FW and SEP chains, its NodePort rules, its filter-table
// REJECT/DROP/firewall rules) and returns its entries for the dispatch.
func renderServicePort(out *output, snap *Snapshot, cfg RenderConfig, svc *ServicePort) []dispatchEntry {
	p, ok := planServicePort(snap, cfg, svc)
	if !ok {
		return nil
	}
	if p.sets.any && p.internal.chain == "" {
		out.stats.NoLocalInternal++
	}
	if p.sets.any && p.external.chain == "" {
		out.stats.NoLocalExternal++
	}
	dispatch := renderFrontends(out, cfg, svc, p)
	if p.internal.chain != "" {
		renderClusterIPMasquerade(out, snap, cfg, svc, p)
	}
	if p.extChain {
		renderExternalChain(out, snap, cfg, svc, p)
	}
	if p.fwChain {
		renderFirewallChain(out, snap, cfg, svc, p)
	}
	renderEndpoints(out, snap, cfg, svc, p)
	return dispatch
}

// renderFrontends returns the dispatch entries of the Service port's
// addresses and writes its NodePort rules and its filter verdicts.
func renderFrontends(out *output, cfg RenderConfig, svc *ServicePort, p portPlan) []dispatchEntry {
	str, proto := svc.Name.String(), svc.Name.Protocol
	extChain, lbChain := p.chains.ext, p.chains.ext
	if p.fwChain {
		lbChain = p.chains.fw
	}
	var dispatch []dispatchEntry
	entry := func(ip netip.Addr, what, target string) {
		dispatch = append(dispatch, dispatchEntry{addr: ip, proto: proto, port: svc.Port, comment: str + " " + what, target: target})
	}
	refuse := func(root string, ip netip.Addr, t trafficPlan) {
		out.filterKeyed(root, addrKeyed(ip, destMatch(ip, proto, svc.Port, t.why).add("-j", t.verdict)))
	}
	// The cluster IP.
	if p.internal.chain != "" {
		entry(p.vip, "cluster IP", p.internal.chain)
	} else {
		refuse(ChainServices, p.vip, p.internal)
	}
	// External IPs.
	for _, ip := range p.externalIPs {
		if p.sets.any {
			entry(ip, "external IP", extChain)
		}
		if p.external.chain == "" {
			refuse(ChainExternalServices, ip, p.external)
		}
	}
	// Load balancer IPs.
	for _, ip := range p.lbIPs {
		if p.sets.any {
			entry(ip, "loadbalancer IP", lbChain)
		}
		if p.fwChain {
			out.filterKeyed(ChainProxyFirewall, addrKeyed(ip, destMatch(ip, proto, svc.Port, str+" traffic not accepted by "+lbChain).add("-j", "DROP")))
		}
	}
	if p.external.chain == "" {
		for _, ip := range p.lbIPs {
			refuse(ChainExternalServices, ip, p.external)
		}
	}
	// The NodePort (never subject to the source ranges).
	if svc.NodePort != 0 {
		pr := protoLower(proto)
		if p.sets.any {
			if cfg.NFAcctLocalhost && cfg.LocalhostNodePortsActive() {
				// Counted on its way in, as kube-proxy counts it.
				out.natKeyed(ChainNodePorts, portKeyed(pr, svc.NodePort, portMatch(proto, svc.NodePort, str).add("-d", "127.0.0.0/8",
					"-m", "nfacct", "--nfacct-name", NFAcctLocalhostNodePorts, "-j", extChain)))
			}
			out.natKeyed(ChainNodePorts, portKeyed(pr, svc.NodePort, portMatch(proto, svc.NodePort, str).add("-j", extChain)))
		}
		if p.external.chain == "" {
			out.filterKeyed(ChainExternalServices, portKeyed(pr, svc.NodePort, comment(p.external.why).add("-m", "addrtype", "--dst-type", "LOCAL",
				"-p", pr, "-m", pr, "--dport", fmt.Sprint(svc.NodePort), "-j", p.external.verdict)))
		}
	}
	// The health check node port is always open in the filter table.
	if svc.HealthCheckNodePort != 0 {
		out.filterKeyed(ChainNodePorts, portKeyed("tcp", svc.HealthCheckNodePort, portMatch(v1.ProtocolTCP, svc.HealthCheckNodePort, str+" health check node port").add("-j", "ACCEPT")))
	}
	return dispatch
}

// renderClusterIPMasquerade marks off-cluster traffic to the cluster IP
// for masquerade, first in its policy chain.
func renderClusterIPMasquerade(out *output, snap *Snapshot, cfg RenderConfig, svc *ServicePort, p portPlan) {
	_, notLocal, local := localMatch(snap, cfg)
	if !cfg.MasqueradeAll && !local {
		return
	}
	var m ruleBuilder
	switch {
	case !cfg.largeCluster:
		m = destMatch(p.vip, svc.Name.Protocol, svc.Port, svc.Name.String()+" cluster IP")
	case !cfg.MasqueradeAll && p.internal.chain == p.chains.svc:
		// The local-traffic test alone: every way into SWY-SVC but the
		// cluster IP's dispatch rule (which matched this address and port
		// already) comes from SWY-EXT, and there the packet is either
		// marked for masquerade already or matched the test this rule
		// negates, so the address and port add nothing.
	default: // the dispatch rule that jumps here names the Service
		pr := protoLower(svc.Name.Protocol)
		m = ruleBuilder{"-d", hostPrefix(p.vip), "-p", pr, "-m", pr, "--dport", fmt.Sprint(svc.Port)}
	}
	if !cfg.MasqueradeAll {
		m = m.add(notLocal...)
	}
	out.natRule(p.internal.chain, m.add("-j", ChainMarkMasq))
}

// renderExternalChain writes SWY-EXT: where traffic from outside goes.
func renderExternalChain(out *output, snap *Snapshot, cfg RenderConfig, svc *ServicePort, p portPlan) {
	str, extChain, svcChain := svc.Name.String(), p.chains.ext, p.chains.svc
	out.natChain(extChain, nil)
	if !p.externalLocal {
		out.natRule(extChain, comment("masquerade traffic for "+str+" external destinations").add("-j", ChainMarkMasq))
	} else {
		if local, _, ok := localMatch(snap, cfg); ok {
			// Pod traffic to an external address is sent to any endpoint,
			// as if it had gone out to the load balancer and back.
			out.natRule(extChain, comment("pod traffic for "+str+" external destinations").add(local...).add("-j", svcChain))
		}
		// The node's own traffic to an external address: its source is a
		// local address, so it must be masqueraded, and it goes anywhere.
		out.natRule(extChain, comment("masquerade LOCAL traffic for "+str+" external destinations").add("-m", "addrtype", "--src-type", "LOCAL", "-j", ChainMarkMasq))
		out.natRule(extChain, comment("route LOCAL traffic for "+str+" external destinations").add("-m", "addrtype", "--src-type", "LOCAL", "-j", svcChain))
	}
	if p.external.chain != "" {
		out.natRule(extChain, ruleBuilder{"-j", p.external.chain})
	}
}

// renderFirewallChain writes SWY-FW: the load balancer source ranges.
func renderFirewallChain(out *output, snap *Snapshot, cfg RenderConfig, svc *ServicePort, p portPlan) {
	str, extChain, fwChain := svc.Name.String(), p.chains.ext, p.chains.fw
	out.natChain(fwChain, nil)
	c := comment(str + " loadbalancer IP")
	allowFromNode := false
	primary, hasPrimary := cfg.PrimaryIP(snap.Node)
	for _, r := range svc.LoadBalancerSourceRanges {
		if r.Addr().Is4() != (cfg.Family == v1.IPv4Protocol) {
			continue
		}
		out.natRule(fwChain, c.add("-s", r.String(), "-j", extChain))
		if hasPrimary && r.Contains(primary) {
			allowFromNode = true
		}
	}
	// A VIP-like load balancer's address is often local to the node:
	// the node's own requests then come from the LB IP.
	if allowFromNode {
		for _, ip := range p.lbIPs {
			out.natRule(fwChain, c.add("-s", hostPrefix(ip), "-j", extChain))
		}
	}
	out.natRule(fwChain, comment("other traffic to "+str+" will be dropped by "+ChainProxyFirewall))
}

// renderEndpoints fills the policy chains and writes the endpoint chains.
func renderEndpoints(out *output, snap *Snapshot, cfg RenderConfig, svc *ServicePort, p portPlan) {
	name, str := svc.Name, svc.Name.String()
	// With externalTrafficPolicy Local, pod traffic to an external address
	// is short-circuited to the SVC chain unmasqueraded, and "pod" means the
	// local-traffic detector's verdict, which (ClusterCIDR) includes pods of
	// other nodes: a remote pod reaching itself that way needs its hairpin
	// mark, so there every endpoint keeps its chain.
	remote := func(ep Endpoint) bool { return !p.externalLocal && remoteEndpoint(snap, ep) }
	if p.clusterChain {
		writeEndpointRules(out, cfg, p.chains.svc, svc, p.sets.cluster, remote)
	}
	if p.localChain {
		writeEndpointRules(out, cfg, p.chains.svl, svc, p.sets.local, remote)
	}
	seen := map[string]bool{}
	for _, ep := range append(append([]Endpoint{}, p.sets.cluster...), p.sets.local...) {
		sep := EndpointChainName(name, ep)
		if seen[sep] || remote(ep) {
			continue
		}
		seen[sep] = true
		pr := protoLower(name.Protocol)
		out.natRule(sep, ruleBuilder{"-s", hostPrefix(ep.Addr)}.add(endpointComment(cfg, str)...).add("-j", ChainMarkMasq))
		dnat := ruleBuilder{"-p", pr}.add(endpointComment(cfg, str)...)
		if svc.AffinityTimeout > 0 {
			dnat = dnat.add("-m", "recent", "--name", sep, "--set")
		}
		out.natRule(sep, dnat.add("-j", "DNAT", "--to-destination", ep.String()))
	}
}

// hasUsable reports whether any endpoint of the family is usable anywhere.
func hasUsable(all []Endpoint, family v1.IPFamily) bool {
	for _, ep := range all {
		if familyOf(ep.Addr) == family && (ep.Ready || ep.Serving && ep.Terminating) {
			return true
		}
	}
	return false
}

// A DNAT rule matches its protocol with "-p" alone: DNAT to a port needs
// it, while kube-proxy's "-m tcp" beside it adds nothing in nat (conntrack
// has reassembled every fragment before nat sees a packet) and, on
// nf_tables, is a further expression in each of 100,000 rules at 10,000
// Services that the kernel re-validates on every restore (a fifth of a
// one-chain restore there).

// writeEndpointRules fills a policy chain (SVC or SVL): affinity checks,
// then the probability cascade. A local endpoint (or one that may be) is a
// jump to its SEP chain, which marks hairpin traffic for masquerade and
// DNATs. A remote endpoint is DNATed right here: only a pod on this node
// can be the source of a connection this node DNATs back to it (a remote
// pod's own connections are translated on its node), so its hairpin rule
// could never match and its chain is a rule and a jump the kernel
// validates on every restore for nothing.
func writeEndpointRules(out *output, cfg RenderConfig, chain string, svc *ServicePort, eps []Endpoint, remote func(Endpoint) bool) {
	str := svc.Name.String()
	if _, ok := out.nat[chain]; !ok {
		out.natChain(chain, nil)
	}
	p := protoLower(svc.Name.Protocol)
	// target is where a chosen endpoint's packet goes: its SEP chain, or
	// (remote) its DNAT, refreshing the affinity entry as SEP would.
	target := func(r ruleBuilder, ep Endpoint, sep string) ruleBuilder {
		if !remote(ep) {
			return r.add("-j", sep)
		}
		r = ruleBuilder{"-p", p}.add(r...)
		if svc.AffinityTimeout > 0 {
			r = r.add("-m", "recent", "--name", sep, "--set")
		}
		return r.add("-j", "DNAT", "--to-destination", ep.String())
	}
	if svc.AffinityTimeout > 0 {
		for _, ep := range eps {
			sep := EndpointChainName(svc.Name, ep)
			out.natRule(chain, target(endpointComment(cfg, str+" -> "+ep.String()).add("-m", "recent", "--name", sep, "--rcheck",
				"--seconds", fmt.Sprint(svc.AffinityTimeout), "--reap"), ep, sep))
		}
	}
	for i, ep := range eps {
		r := endpointComment(cfg, str+" -> "+ep.String())
		if left := len(eps) - i; left > 1 {
			r = r.add("-m", "statistic", "--mode", "random", "--probability", fmt.Sprintf("%0.10f", 1.0/float64(left)))
		}
		out.natRule(chain, target(r, ep, EndpointChainName(svc.Name, ep)))
	}
}

// remoteEndpoint reports whether an endpoint certainly runs on another
// node: its slice names another node, and its address is none of this
// node's (Node object or interfaces) and outside this node's pod CIDRs. An
// endpoint without a node name (hand-written slices often have none, and
// may point at this node) is not remote.
func remoteEndpoint(snap *Snapshot, ep Endpoint) bool {
	if ep.NodeName == "" || ep.NodeName == snap.Node.Name {
		return false
	}
	if slices.Contains(snap.Node.Addresses, ep.Addr) || slices.Contains(snap.HostAddrs, ep.Addr) {
		return false
	}
	for _, c := range snap.Node.PodCIDRs {
		if c.Contains(ep.Addr) {
			return false
		}
	}
	return true
}

// LargeClusterEndpoints is the number of endpoints (of one family) above
// which the per-endpoint rules carry no comment, as kube-proxy's large
// cluster mode does. A comment is a 256-byte match in every rule that has
// one: at 10,000 Services x 10 endpoints, leaving them out of the three
// rules per endpoint takes about 80 MB off the nat table, which legacy
// iptables copies in full on every restore, and the masquerade check of
// each SVC chain loses its comment too (on nf_tables a comment is an
// expression the kernel re-validates on every restore: 10,000 of them are
// about a tenth of a one-chain restore). The dispatch rule that jumps to a
// Service's chain keeps its comment, so the tracer, `explain` and
// iptables-save still name the Service.
const LargeClusterEndpoints = 1000

// endpointComment is the comment of a per-endpoint rule, or nothing in a
// large cluster.
func endpointComment(cfg RenderConfig, c string) ruleBuilder {
	if cfg.largeCluster {
		return nil
	}
	return comment(c)
}
