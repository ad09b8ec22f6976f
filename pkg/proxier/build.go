package proxier

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"unique"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
)

// Labels and defaults the proxy honours, as kube-proxy does.
const (
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	LabelHeadless         = "service.kubernetes.io/headless"
	LabelZone             = "topology.kubernetes.io/zone"

	// DefaultAffinityTimeout is the API's default ClientIP affinity timeout.
	DefaultAffinityTimeout = 10800
)

// Filter decides which Services this proxy handles.
type Filter struct {
	// ProxyName, when set, selects only Services labelled
	// service.kubernetes.io/service-proxy-name=ProxyName; when empty, only
	// Services without that label are handled.
	ProxyName string
	// DropExternalIPs leaves spec.externalIPs out (kube-proxy's
	// AllowServiceExternalIPs feature gate set to false).
	DropExternalIPs bool
}

// ServiceLabelSelector is the label selector that lists the Services the
// filter accepts, for informers.
func (f Filter) ServiceLabelSelector() string {
	if f.ProxyName != "" {
		return LabelServiceProxyName + "=" + f.ProxyName
	}
	return "!" + LabelServiceProxyName
}

// SkipReason says why a Service is not proxied, or "" when it is.
func (f Filter) SkipReason(svc *v1.Service) string {
	name, labelled := svc.Labels[LabelServiceProxyName]
	switch {
	case f.ProxyName == "" && labelled:
		return fmt.Sprintf("labelled %s=%s", LabelServiceProxyName, name)
	case f.ProxyName != "" && name != f.ProxyName:
		return fmt.Sprintf("not labelled %s=%s", LabelServiceProxyName, f.ProxyName)
	case svc.Spec.Type == v1.ServiceTypeExternalName:
		return "type ExternalName"
	case svc.Spec.ClusterIP == v1.ClusterIPNone || svc.Spec.ClusterIP == "":
		return "headless"
	}
	return ""
}

// ServicePorts converts a Service into the model's ServicePorts. A skipped
// Service yields nil and no error. Addresses that do not parse are reported
// in the error while the rest of the Service is still converted, so one bad
// externalIP never takes the ClusterIP down with it.
func (f Filter) ServicePorts(svc *v1.Service) ([]*ServicePort, error) {
	if f.SkipReason(svc) != "" {
		return nil, nil
	}
	var problems []string
	clusterIPs := serviceClusterIPs(svc, &problems)
	if len(clusterIPs) == 0 {
		return nil, fmt.Errorf("service %s/%s: no usable cluster IP: %s", svc.Namespace, svc.Name, strings.Join(problems, "; "))
	}
	var externalIPs []netip.Addr
	if !f.DropExternalIPs {
		externalIPs = parseAddrs(svc.Spec.ExternalIPs, "spec.externalIPs", &problems)
	}
	lbIPs, ranges := loadBalancerFrontends(svc, &problems)

	externalLocal := svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal &&
		(svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer || len(externalIPs) > 0)
	internalLocal := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal

	var affinity int32
	if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		affinity = DefaultAffinityTimeout
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			affinity = *c.ClientIP.TimeoutSeconds
		}
	}

	ports := make([]*ServicePort, 0, len(svc.Spec.Ports))
	for _, p := range svc.Spec.Ports {
		proto := p.Protocol
		if proto == "" {
			proto = v1.ProtocolTCP
		}
		sp := &ServicePort{
			Name:                     ServicePortName{Namespace: svc.Namespace, Name: svc.Name, Port: p.Name, Protocol: proto},
			ClusterIPs:               clusterIPs,
			Port:                     p.Port,
			ExternalIPs:              externalIPs,
			LoadBalancerIPs:          lbIPs,
			LoadBalancerSourceRanges: ranges,
			ExternalPolicyLocal:      externalLocal,
			InternalPolicyLocal:      internalLocal,
			AffinityTimeout:          affinity,
		}
		if svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer {
			sp.NodePort = p.NodePort
		}
		if externalLocal && svc.Spec.Type == v1.ServiceTypeLoadBalancer {
			sp.HealthCheckNodePort = svc.Spec.HealthCheckNodePort
		}
		ports = append(ports, sp)
	}
	if len(problems) > 0 {
		return ports, fmt.Errorf("service %s/%s: %s", svc.Namespace, svc.Name, strings.Join(problems, "; "))
	}
	return ports, nil
}

// serviceClusterIPs parses a Service's cluster IPs, one per family.
func serviceClusterIPs(svc *v1.Service, problems *[]string) []netip.Addr {
	raw := svc.Spec.ClusterIPs
	if len(raw) == 0 {
		raw = []string{svc.Spec.ClusterIP}
	}
	var out []netip.Addr
	seenFamily := map[v1.IPFamily]bool{}
	for _, a := range parseAddrs(raw, "spec.clusterIPs", problems) {
		if !seenFamily[familyOf(a)] {
			seenFamily[familyOf(a)] = true
			out = append(out, a)
		}
	}
	return out
}

// parseAddrs parses the addresses of a list field, noting each that does
// not parse in problems.
func parseAddrs(values []string, field string, problems *[]string) []netip.Addr {
	var out []netip.Addr
	for i, s := range values {
		a, err := netip.ParseAddr(s)
		if err != nil {
			*problems = append(*problems, fmt.Sprintf("%s[%d]: invalid IP address %q", field, i, s))
			continue
		}
		out = append(out, a.Unmap())
	}
	return out
}

// loadBalancerFrontends are a LoadBalancer Service's ingress IPs (ipMode
// VIP or unset) and its source ranges.
func loadBalancerFrontends(svc *v1.Service, problems *[]string) ([]netip.Addr, []netip.Prefix) {
	if svc.Spec.Type != v1.ServiceTypeLoadBalancer {
		return nil, nil
	}
	var lbIPs []netip.Addr
	var ranges []netip.Prefix
	for i, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP == "" {
			continue // hostname-only ingress: nothing to program
		}
		if ing.IPMode != nil && *ing.IPMode == v1.LoadBalancerIPModeProxy {
			continue
		}
		a, err := netip.ParseAddr(ing.IP)
		if err != nil {
			*problems = append(*problems, fmt.Sprintf("status.loadBalancer.ingress[%d].ip: invalid IP address %q", i, ing.IP))
			continue
		}
		lbIPs = append(lbIPs, a.Unmap())
	}
	for i, s := range svc.Spec.LoadBalancerSourceRanges {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			*problems = append(*problems, fmt.Sprintf("spec.loadBalancerSourceRanges[%d]: invalid CIDR %q", i, s))
			continue
		}
		ranges = append(ranges, p.Masked())
	}
	return lbIPs, ranges
}

// SliceServiceName returns the namespace/name of the Service an EndpointSlice
// belongs to, or "" (and the reason) when the proxy ignores the slice.
func SliceServiceName(slice *discovery.EndpointSlice) (string, string) {
	name := slice.Labels[discovery.LabelServiceName]
	switch {
	case name == "":
		return "", "no " + discovery.LabelServiceName + " label"
	case slice.AddressType == discovery.AddressTypeFQDN:
		return "", "addressType FQDN"
	case slice.AddressType != discovery.AddressTypeIPv4 && slice.AddressType != discovery.AddressTypeIPv6:
		return "", fmt.Sprintf("unknown addressType %q", slice.AddressType)
	}
	if _, headless := slice.Labels[LabelHeadless]; headless {
		return "", "headless"
	}
	return slice.Namespace + "/" + name, ""
}

// PortKey identifies a port within a Service by its name and protocol, which
// is how EndpointSlice ports are matched to Service ports.
type PortKey struct {
	Name     string
	Protocol v1.Protocol
}

// PortEndpoints are the endpoints of one port.
type PortEndpoints struct {
	Port      PortKey
	Endpoints []Endpoint
}

// PortList is an EndpointSlice's (or a Service's merged) endpoints per
// port. It is a list, not a map: a slice has one port or a few, and at
// 10,000 Services a small map per slice weighs megabytes.
type PortList []PortEndpoints

// For returns the endpoints of one port, or nil.
func (l PortList) For(k PortKey) []Endpoint {
	for _, p := range l {
		if p.Port == k {
			return p.Endpoints
		}
	}
	return nil
}

// set sets one port's endpoints, replacing what it had.
func (l PortList) set(k PortKey, eps []Endpoint) PortList {
	for i := range l {
		if l[i].Port == k {
			l[i].Endpoints = eps
			return l
		}
	}
	return append(l, PortEndpoints{Port: k, Endpoints: eps})
}

// NamedSlice is one EndpointSlice's endpoints, by the slice's name.
type NamedSlice struct {
	Name  string
	Ports PortList
}

// SliceEndpoints converts one EndpointSlice into endpoints per port. Endpoints
// whose address does not parse are dropped and reported in the error.
func SliceEndpoints(slice *discovery.EndpointSlice) (PortList, error) {
	var problems []string
	out := make(PortList, 0, len(slice.Ports))
	for pi, p := range slice.Ports {
		if p.Port == nil {
			problems = append(problems, fmt.Sprintf("ports[%d]: no port number", pi))
			continue
		}
		key := PortKey{Protocol: v1.ProtocolTCP}
		if p.Name != nil {
			key.Name = *p.Name
		}
		if p.Protocol != nil {
			key.Protocol = *p.Protocol
		}
		eps := make([]Endpoint, 0, len(slice.Endpoints))
		for ei, e := range slice.Endpoints {
			if len(e.Addresses) == 0 {
				continue
			}
			a, err := netip.ParseAddr(e.Addresses[0])
			if err != nil {
				if pi == 0 {
					problems = append(problems, fmt.Sprintf("endpoints[%d].addresses[0]: invalid IP address %q", ei, e.Addresses[0]))
				}
				continue
			}
			eps = append(eps, endpointFrom(e, a.Unmap(), *p.Port))
		}
		// In MergeSlices' order, first copy of a duplicate kept, so a
		// Service with one slice shares these lists.
		sort.SliceStable(eps, func(i, j int) bool { return lessEndpoint(eps[i], eps[j]) })
		uniq := eps[:0]
		for i, ep := range eps {
			if i == 0 || lessEndpoint(uniq[len(uniq)-1], ep) {
				uniq = append(uniq, ep)
			}
		}
		out = out.set(key, uniq)
	}
	if len(problems) > 0 {
		return out, fmt.Errorf("endpointslice %s/%s: %s", slice.Namespace, slice.Name, strings.Join(problems, "; "))
	}
	return out, nil
}

// endpointFrom reads an endpoint's conditions as the API defines nil values:
// ready nil means ready, serving nil defers to ready, terminating nil means
// not terminating.
func endpointFrom(e discovery.Endpoint, addr netip.Addr, port int32) Endpoint {
	ready := e.Conditions.Ready == nil || *e.Conditions.Ready
	serving := ready
	if e.Conditions.Serving != nil {
		serving = *e.Conditions.Serving
	}
	terminating := e.Conditions.Terminating != nil && *e.Conditions.Terminating
	ep := Endpoint{Addr: addr, Port: port, Ready: ready, Serving: serving, Terminating: terminating}
	if e.NodeName != nil {
		ep.NodeName = unique.Make(*e.NodeName).Value()
	}
	if e.Hints != nil && (len(e.Hints.ForZones) > 0 || len(e.Hints.ForNodes) > 0) {
		ep.Hints = &TopologyHints{}
		for _, z := range e.Hints.ForZones {
			ep.Hints.Zones = append(ep.Hints.Zones, unique.Make(z.Name).Value())
		}
		for _, n := range e.Hints.ForNodes {
			ep.Hints.Nodes = append(ep.Hints.Nodes, unique.Make(n.Name).Value())
		}
	}
	return ep
}

// MergeSlices merges the per-port endpoints of all slices of one Service,
// visiting slices in name order and keeping the first copy of an endpoint
// that appears in more than one slice.
func MergeSlices(parts []NamedSlice) PortList {
	if len(parts) == 1 {
		// The common case: one slice. Its lists are the result when they
		// are already in order without duplicates: share them, no copy.
		shared := true
		for _, p := range parts[0].Ports {
			for i := 1; i < len(p.Endpoints) && shared; i++ {
				shared = lessEndpoint(p.Endpoints[i-1], p.Endpoints[i])
			}
		}
		if shared {
			return parts[0].Ports
		}
	}
	ordered := parts
	if !slices.IsSortedFunc(ordered, func(a, b NamedSlice) int { return strings.Compare(a.Name, b.Name) }) {
		ordered = slices.Clone(ordered)
		slices.SortFunc(ordered, func(a, b NamedSlice) int { return strings.Compare(a.Name, b.Name) })
	}
	var out PortList
	seen := map[PortKey]map[string]bool{}
	for _, sl := range ordered {
		for _, p := range sl.Ports {
			if seen[p.Port] == nil {
				seen[p.Port] = map[string]bool{}
			}
			eps := out.For(p.Port)
			for _, ep := range p.Endpoints {
				s := ep.String()
				if seen[p.Port][s] {
					continue
				}
				seen[p.Port][s] = true
				eps = append(eps, ep)
			}
			out = out.set(p.Port, eps)
		}
	}
	for _, p := range out {
		eps := p.Endpoints
		sort.SliceStable(eps, func(i, j int) bool { return lessEndpoint(eps[i], eps[j]) })
	}
	return out
}

// lessEndpoint orders endpoints by address, then port.
func lessEndpoint(a, b Endpoint) bool {
	return a.Addr.Less(b.Addr) || (a.Addr == b.Addr && a.Port < b.Port)
}

// NodeInfoFrom extracts the node facts the proxy uses.
func NodeInfoFrom(node *v1.Node) NodeInfo {
	info := NodeInfo{Name: node.Name, Known: true, Zone: node.Labels[LabelZone], Deleting: node.DeletionTimestamp != nil}
	for _, taint := range node.Spec.Taints {
		if taint.Key == "ToBeDeletedByClusterAutoscaler" {
			info.Deleting = true
		}
	}
	seen := map[netip.Addr]bool{}
	for _, a := range node.Status.Addresses {
		if a.Type != v1.NodeInternalIP && a.Type != v1.NodeExternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil || seen[ip.Unmap()] {
			continue
		}
		seen[ip.Unmap()] = true
		info.Addresses = append(info.Addresses, ip.Unmap())
	}
	for _, c := range node.Spec.PodCIDRs {
		if p, err := netip.ParsePrefix(c); err == nil {
			info.PodCIDRs = append(info.PodCIDRs, p.Masked())
		}
	}
	return info
}

// SnapshotFromObjects builds a snapshot from plain API objects, as the
// offline commands do. Problems with individual objects are returned as
// warnings; they never stop the rest from being built.
func SnapshotFromObjects(f Filter, nodeName string, services []*v1.Service, slices []*discovery.EndpointSlice, nodes []*v1.Node) (*Snapshot, []error) {
	snap := NewSnapshot()
	snap.Node.Name = nodeName
	var warnings []error
	for _, n := range nodes {
		if n.Name == nodeName {
			snap.Node = NodeInfoFrom(n)
		}
	}
	for _, svc := range services {
		ports, err := f.ServicePorts(svc)
		if err != nil {
			warnings = append(warnings, err)
		}
		for _, p := range ports {
			snap.Services[p.Name] = p
		}
	}
	bySvc := map[string][]NamedSlice{}
	for _, s := range slices {
		key, _ := SliceServiceName(s)
		if key == "" {
			continue
		}
		eps, err := SliceEndpoints(s)
		if err != nil {
			warnings = append(warnings, err)
		}
		bySvc[key] = append(bySvc[key], NamedSlice{Name: s.Name, Ports: eps})
	}
	// Offline there is no host: the Node's addresses and loopback stand in.
	snap.HostAddrs = append(append([]netip.Addr{}, snap.Node.Addresses...), netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback())
	for name := range snap.Services {
		merged := MergeSlices(bySvc[name.ServiceKey()])
		if eps := merged.For(PortKey{Name: name.Port, Protocol: name.Protocol}); len(eps) > 0 {
			snap.Endpoints[name] = eps
		}
	}
	return snap, warnings
}
