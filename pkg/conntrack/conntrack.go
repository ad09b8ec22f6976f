// Package conntrack owns deleting entries from the kernel's connection
// tracking table, through netlink (github.com/vishvananda/netlink). It is a
// host-layer sibling of pkg/iptables: the decision which entries are stale
// belongs to pkg/proxier; this package only lists and deletes.
package conntrack

import (
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Flow is the part of a conntrack entry the stale-flow decision reads.
type Flow struct {
	Protocol uint8 // unix.IPPROTO_UDP, ...
	// OrigDst is where the client sent the packet (a Service address).
	OrigDst netip.AddrPort
	// ReplySrc is where replies come from: the endpoint after DNAT, or the
	// original destination itself when nothing was translated.
	ReplySrc netip.AddrPort
}

// Interface deletes UDP entries of one IP family that a predicate calls
// stale, returning how many went.
type Interface interface {
	DeleteUDP(ipv6 bool, stale func(Flow) bool) (int, error)
}

// Netlink is the real conntrack table of the current network namespace.
type Netlink struct{}

type filter func(Flow) bool

func (f filter) MatchConntrackFlow(c *netlink.ConntrackFlow) bool {
	if c.Forward.Protocol != unix.IPPROTO_UDP {
		return false
	}
	dst, ok1 := netip.AddrFromSlice(c.Forward.DstIP)
	src, ok2 := netip.AddrFromSlice(c.Reverse.SrcIP)
	if !ok1 || !ok2 {
		return false
	}
	return f(Flow{
		Protocol: c.Forward.Protocol,
		OrigDst:  netip.AddrPortFrom(dst.Unmap(), c.Forward.DstPort),
		ReplySrc: netip.AddrPortFrom(src.Unmap(), c.Reverse.SrcPort),
	})
}

// DeleteUDP dumps the table once and deletes every stale UDP entry.
func (Netlink) DeleteUDP(ipv6 bool, stale func(Flow) bool) (int, error) {
	family := netlink.InetFamily(unix.AF_INET)
	if ipv6 {
		family = netlink.InetFamily(unix.AF_INET6)
	}
	n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, family, filter(stale))
	return int(n), err
}

// Fake is an in-memory conntrack table for unit tests.
type Fake struct {
	mu      sync.Mutex
	Flows   []Flow
	Deleted []Flow
	// Listings counts the calls (each lists the whole table).
	Listings int
}

// DeleteUDP removes the stale UDP flows of the family.
func (f *Fake) DeleteUDP(ipv6 bool, stale func(Flow) bool) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Listings++
	var keep []Flow
	n := 0
	for _, fl := range f.Flows {
		if fl.Protocol == unix.IPPROTO_UDP && fl.OrigDst.Addr().Is6() == ipv6 && stale(fl) {
			f.Deleted = append(f.Deleted, fl)
			n++
			continue
		}
		keep = append(keep, fl)
	}
	f.Flows = keep
	return n, nil
}
