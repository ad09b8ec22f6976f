package main

import (
	"net/netip"
	"testing"

	"github.com/switchyard-proxy/switchyard/test/e2e/cluster"
)

// The load's 30,000 addresses are distinct, inside the Service range, and
// none is the range's network, first (the kubernetes Service's) or
// broadcast address.
func TestLoadIPsAreDistinctAndInRange(t *testing.T) {
	prefix := netip.MustParsePrefix(cluster.ServiceCIDR)
	seen := map[string]int{}
	allocated := 0
	for i := range 30000 {
		ip := loadIP(i)
		if ip == "" {
			allocated++
			continue
		}
		a := netip.MustParseAddr(ip)
		if !prefix.Contains(a) || a == prefix.Addr() || a == prefix.Addr().Next() {
			t.Fatalf("loadIP(%d) = %s, not a usable address of %s", i, ip, prefix)
		}
		if j, ok := seen[ip]; ok {
			t.Fatalf("loadIP(%d) = loadIP(%d) = %s", i, j, ip)
		}
		seen[ip] = i
	}
	if allocated > 3 {
		t.Errorf("%d of 30,000 Services left to the allocator, want at most 3", allocated)
	}
}
