// Package proxier owns switchyard's desired-state model, the renderer that
// turns a model into iptables-restore text, the diff against what was last
// applied, and the sync loop that drives it.
//
// It never executes anything on the host itself: applying goes through the
// small Host interface, implemented by pkg/iptables (and by an in-memory fake
// in tests). The model is plain Go values, buildable from API objects that
// came from informers or from YAML files, so rendering works with no cluster.
package proxier

import (
	"cmp"
	"net/netip"
	"reflect"
	"sort"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
)

// ServicePortName identifies one port of one Service: namespace/name:port
// plus the protocol.
type ServicePortName struct {
	Namespace string
	Name      string
	Port      string
	Protocol  v1.Protocol
}

// String is "namespace/name:port", or "namespace/name" for an unnamed port;
// the form kube-proxy uses in rule comments.
func (n ServicePortName) String() string {
	if n.Port == "" {
		return n.Namespace + "/" + n.Name
	}
	return n.Namespace + "/" + n.Name + ":" + n.Port
}

// ServiceKey is namespace/name of the Service the port belongs to.
func (n ServicePortName) ServiceKey() string { return n.Namespace + "/" + n.Name }

// ServicePort is everything the renderer needs to know about one port of a
// Service. Fields that later features use (NodePort, external addresses,
// traffic policies, topology) are carried from the start so the model never
// has to change shape.
type ServicePort struct {
	Name ServicePortName
	// ClusterIPs holds at most one address per IP family.
	ClusterIPs []netip.Addr
	Port       int32
	NodePort   int32

	ExternalIPs []netip.Addr
	// LoadBalancerIPs are ingress IPs with ipMode VIP (or unset).
	LoadBalancerIPs          []netip.Addr
	LoadBalancerSourceRanges []netip.Prefix

	ExternalPolicyLocal bool
	InternalPolicyLocal bool
	HealthCheckNodePort int32

	// AffinityTimeout is the ClientIP session affinity timeout in seconds;
	// zero means no session affinity.
	AffinityTimeout int32
}

// ClusterIP returns the Service's cluster IP of the given family.
func (s *ServicePort) ClusterIP(family v1.IPFamily) (netip.Addr, bool) {
	for _, ip := range s.ClusterIPs {
		if familyOf(ip) == family {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// Endpoint is one backend of a Service port, merged from EndpointSlices.
type Endpoint struct {
	Addr        netip.Addr
	Port        int32
	Ready       bool
	Serving     bool
	Terminating bool
	// NodeName is interned (see endpointFrom): 100,000 endpoints name a
	// few hundred nodes.
	NodeName string
	// Hints are the EndpointSlice controller's topology hints, nil when it
	// set none (the common case): an Endpoint is 56 bytes, and a slice's ten
	// fit in one 576-byte allocation.
	Hints *TopologyHints
}

// TopologyHints are the zones and nodes an endpoint is meant for
// (spec.trafficDistribution).
type TopologyHints struct {
	Zones, Nodes []string
}

// zoneHints and nodeHints are the endpoint's hints, nil when it has none.
func (e *Endpoint) zoneHints() []string {
	if e.Hints == nil {
		return nil
	}
	return e.Hints.Zones
}

func (e *Endpoint) nodeHints() []string {
	if e.Hints == nil {
		return nil
	}
	return e.Hints.Nodes
}

// String is "ip:port" ("[ip]:port" for IPv6).
func (e Endpoint) String() string {
	return netip.AddrPortFrom(e.Addr, uint16(e.Port)).String()
}

// NodeInfo is what the proxy knows about the node it runs on.
type NodeInfo struct {
	Name string
	// Known is false until the Node object has been seen.
	Known     bool
	Addresses []netip.Addr
	Zone      string
	PodCIDRs  []netip.Prefix
	// Deleting is true while the Node is being deleted (or marked for
	// deletion by the cluster autoscaler): /healthz then fails so load
	// balancers drain the node.
	Deleting bool
}

// PrimaryIP is the node's first address of the family, from its Node object.
func (n NodeInfo) PrimaryIP(family v1.IPFamily) (netip.Addr, bool) {
	for _, a := range n.Addresses {
		if familyOf(a) == family {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// Snapshot is the complete desired input of one sync: every Service port the
// proxy handles, the endpoints of each, and the node's own facts. A Snapshot
// is never mutated once handed to the renderer.
type Snapshot struct {
	Services  map[ServicePortName]*ServicePort
	Endpoints map[ServicePortName][]Endpoint
	Node      NodeInfo
	// HostAddrs are the addresses on the node's interfaces (for
	// --nodeport-addresses); the daemon reads them from the host, the
	// offline commands take the Node's addresses and loopback.
	HostAddrs []netip.Addr
	// TriggerTimes are when the EndpointSlice changes folded into this
	// snapshot were triggered (their last-change-trigger-time annotation),
	// for the network programming latency metric.
	TriggerTimes []time.Time

	// order, when set, is a sorted view of Services and Endpoints.
	order *snapOrder
}

// snapOrder is a sorted view of a snapshot's maps: the Service port names
// in SortedNames order and, when known, each name's ServicePort and
// endpoints aligned with them. It holds the very maps it was made for, and
// a snapshot whose maps are others (a copy with some Services left out)
// does not use it.
type snapOrder struct {
	services map[ServicePortName]*ServicePort
	eps      map[ServicePortName][]Endpoint
	names    []ServicePortName
	svcList  []*ServicePort // nil: not known
	epList   [][]Endpoint
}

// SetSortedNames hands the snapshot its Service port names already sorted,
// to be returned by SortedNames: the tracker keeps them between snapshots
// while no Service changes, so a sync for an endpoint change does not sort
// 10,000 names. names must be exactly the keys of Services, in order, and
// must not be changed afterwards.
func (s *Snapshot) SetSortedNames(names []ServicePortName) {
	s.order = &snapOrder{services: s.Services, eps: s.Endpoints, names: names}
}

// SetSorted is SetSortedNames with, aligned with names, each name's
// ServicePort and endpoints (Services[names[i]] and Endpoints[names[i]]),
// so the renderer finds what changed by comparing pointers, without a map
// lookup per Service port. None of the three may be changed afterwards.
func (s *Snapshot) SetSorted(names []ServicePortName, svcs []*ServicePort, eps [][]Endpoint) {
	s.SetSortedNames(names)
	if len(svcs) == len(names) && len(eps) == len(names) {
		s.order.svcList, s.order.epList = svcs, eps
	}
}

// sortedView is the snapshot's order when it was made for these very maps.
func (s *Snapshot) sortedView() *snapOrder {
	o := s.order
	if o == nil || len(o.names) != len(s.Services) || !sameMap(o.services, s.Services) || !sameMap(o.eps, s.Endpoints) {
		return nil
	}
	return o
}

// sameMap reports whether a and b are the same map (not merely equal).
func sameMap[K comparable, V any](a, b map[K]V) bool {
	return reflect.ValueOf(a).Pointer() == reflect.ValueOf(b).Pointer()
}

// NewSnapshot returns an empty snapshot.
func NewSnapshot() *Snapshot {
	return &Snapshot{
		Services:  map[ServicePortName]*ServicePort{},
		Endpoints: map[ServicePortName][]Endpoint{},
	}
}

// SortedNames returns the snapshot's Service port names in a stable order.
// The slice is shared: callers must not change it.
func (s *Snapshot) SortedNames() []ServicePortName {
	if o := s.sortedView(); o != nil {
		return o.names
	}
	names := make([]ServicePortName, 0, len(s.Services))
	for n := range s.Services {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return lessName(names[i], names[j]) })
	return names
}

func lessName(a, b ServicePortName) bool { return CompareNames(a, b) < 0 }

// CompareNames orders Service port names as SortedNames does: by
// namespace, name, port name and protocol.
func CompareNames(a, b ServicePortName) int {
	if c := cmp.Compare(a.Namespace, b.Namespace); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Name, b.Name); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Port, b.Port); c != 0 {
		return c
	}
	return cmp.Compare(a.Protocol, b.Protocol)
}

func familyOf(a netip.Addr) v1.IPFamily {
	if a.Is4() || a.Is4In6() {
		return v1.IPv4Protocol
	}
	return v1.IPv6Protocol
}

func protoLower(p v1.Protocol) string { return strings.ToLower(string(p)) }
