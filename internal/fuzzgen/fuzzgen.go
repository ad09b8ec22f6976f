// Package fuzzgen turns arbitrary bytes into a proxier.Snapshot full of
// awkward but possible content (odd names, both families, every policy,
// affinity, NodePorts, LB source ranges, endpoints in every state), for
// fuzz targets and for feeding their shapes to the real iptables-restore.
package fuzzgen

import (
	"fmt"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/pkg/proxier"
)

type stream struct {
	data []byte
	pos  int
}

func (s *stream) byte() byte {
	if len(s.data) == 0 {
		return 0
	}
	b := s.data[s.pos%len(s.data)]
	s.pos++
	return b
}

func (s *stream) intn(n int) int { return int(s.byte()) % n }

func (s *stream) bool() bool { return s.byte()&1 == 1 }

var names = []string{"a", "web", "x-y", "a.b", "UPPER", "über", "with space", "quote\"d", "back\\slash", "0", "very-long-name-" + fmt.Sprint(1<<20)}

func (s *stream) name() string { return names[s.intn(len(names))] }

func (s *stream) addr(v6 bool) netip.Addr {
	if v6 {
		return netip.AddrFrom16([16]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, s.byte(), s.byte()})
	}
	return netip.AddrFrom4([4]byte{10, s.byte(), s.byte(), s.byte()})
}

// Snapshot builds a snapshot from data. Every byte string gives one.
func Snapshot(data []byte) *proxier.Snapshot {
	s := &stream{data: data}
	snap := proxier.NewSnapshot()
	snap.Node = proxier.NodeInfo{Name: "node-a", Known: s.bool(), Zone: []string{"", "zone-a", "zone-b"}[s.intn(3)],
		Addresses: []netip.Addr{netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("fd00::1")},
		PodCIDRs:  []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}}
	snap.HostAddrs = slices.Concat(snap.Node.Addresses, []netip.Addr{netip.MustParseAddr("127.0.0.1")})
	protos := []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP}
	nsvc := 1 + s.intn(6)
	for i := 0; i < nsvc; i++ {
		n := proxier.ServicePortName{Namespace: s.name(), Name: s.name(), Port: []string{"", "http", "dns"}[s.intn(3)], Protocol: protos[s.intn(3)]}
		sp := &proxier.ServicePort{Name: n, Port: int32(1 + s.intn(65535)), ClusterIPs: []netip.Addr{s.addr(false)}}
		if s.bool() {
			sp.ClusterIPs = append(sp.ClusterIPs, s.addr(true))
		}
		if s.bool() {
			sp.NodePort = int32(30000 + s.intn(2768))
		}
		if s.bool() {
			sp.ExternalIPs = []netip.Addr{s.addr(s.bool())}
		}
		if s.bool() {
			sp.LoadBalancerIPs = []netip.Addr{s.addr(s.bool())}
			if s.bool() {
				sp.LoadBalancerSourceRanges = []netip.Prefix{netip.PrefixFrom(s.addr(false), s.intn(33)).Masked(), netip.MustParsePrefix("192.168.0.0/16")}
			}
		}
		sp.ExternalPolicyLocal = s.bool()
		sp.InternalPolicyLocal = s.bool()
		if s.bool() {
			sp.HealthCheckNodePort = int32(30000 + s.intn(2768))
		}
		if s.bool() {
			sp.AffinityTimeout = int32(1 + s.intn(86400))
		}
		snap.Services[n] = sp
		neps := s.intn(5)
		for e := 0; e < neps; e++ {
			ep := proxier.Endpoint{Addr: s.addr(s.bool()), Port: int32(1 + s.intn(65535)), Ready: s.bool(), Serving: s.bool(), Terminating: s.bool(),
				NodeName: []string{"", "node-a", "node-b"}[s.intn(3)]}
			if s.bool() {
				ep.Hints = &proxier.TopologyHints{Zones: []string{[]string{"zone-a", "zone-b"}[s.intn(2)]}}
			}
			if s.bool() {
				if ep.Hints == nil {
					ep.Hints = &proxier.TopologyHints{}
				}
				ep.Hints.Nodes = []string{[]string{"node-a", "node-b"}[s.intn(2)]}
			}
			snap.Endpoints[n] = append(snap.Endpoints[n], ep)
		}
	}
	return snap
}

// Config builds a render config for one family from data.
func Config(data []byte, family v1.IPFamily) proxier.RenderConfig {
	s := &stream{data: data, pos: len(data) / 2}
	c := proxier.RenderConfig{Family: family, MasqueradeBit: s.intn(32), MasqueradeAll: s.bool(), LocalhostNodePorts: s.bool(),
		ConntrackTCPBeLiberal: s.bool()}
	if s.bool() {
		c.ClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
		if family == v1.IPv6Protocol {
			c.ClusterCIDR = netip.MustParsePrefix("fd00::/48")
		}
	}
	switch s.intn(4) {
	case 1:
		c.DetectLocal = proxier.LocalDetector{Mode: proxier.DetectNodeCIDR}
	case 2:
		c.DetectLocal = proxier.LocalDetector{Mode: proxier.DetectBridgeInterface, Interface: "cbr0"}
	case 3:
		c.DetectLocal = proxier.LocalDetector{Mode: proxier.DetectInterfaceNamePrefix, Interface: "veth"}
	}
	if s.bool() {
		c.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("127.0.0.0/8")}
	}
	return c
}
