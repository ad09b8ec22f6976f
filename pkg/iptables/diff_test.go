package iptables

import "testing"

func TestDiffSaves(t *testing.T) {
	live := `*nat
:PREROUTING ACCEPT [0:0]
:SWY-SERVICES - [0:0]
:SWY-SVC-A - [0:0]
:SWY-SVC-OLD - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "switchyard service portals" -j SWY-SERVICES
-A PREROUTING -j KUBE-SERVICES
-A SWY-SERVICES -d 10.96.0.1/32 -j SWY-SVC-A
-A SWY-SERVICES -d 10.96.0.9/32 -j SWY-SVC-OLD
-A SWY-SVC-A -j DNAT --to-destination 10.244.1.1:80
-A KUBE-SERVICES -j RETURN
COMMIT
`
	desired := `*nat
:PREROUTING ACCEPT [0:0]
:SWY-SERVICES - [0:0]
:SWY-SVC-A - [0:0]
:SWY-SVC-NEW - [0:0]
-A PREROUTING -m comment --comment "switchyard service portals" -j SWY-SERVICES
-A SWY-SERVICES -d 10.96.0.1/32 -j SWY-SVC-A
-A SWY-SERVICES -d 10.96.0.2/32 -j SWY-SVC-NEW
-A SWY-SVC-A -j DNAT --to-destination 10.244.1.1:80
-A SWY-SVC-NEW -j DNAT --to-destination 10.244.1.2:80
COMMIT
`
	diffs := DiffSaves(live, desired, "SWY-")
	got := map[string]ChainDiff{}
	for _, d := range diffs {
		got[d.Chain] = d
	}
	if len(diffs) != 3 {
		t.Fatalf("diffs = %+v, want SWY-SERVICES changed, SWY-SVC-NEW new, SWY-SVC-OLD stale", diffs)
	}
	if d := got["SWY-SERVICES"]; d.Kind != "changed" || len(d.Added) != 1 || len(d.Removed) != 1 {
		t.Errorf("SWY-SERVICES: %+v", d)
	}
	if got["SWY-SVC-NEW"].Kind != "new" || got["SWY-SVC-OLD"].Kind != "stale" {
		t.Errorf("new/stale: %+v", diffs)
	}
	if _, ok := got["KUBE-SERVICES"]; ok {
		t.Error("a foreign chain was compared")
	}
	if len(DiffSaves(live, live, "SWY-")) != 0 {
		t.Error("identical saves differ")
	}
}
