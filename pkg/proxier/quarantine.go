package proxier

import (
	"context"
	"reflect"
	"sort"
)

// quarantined is a Service port whose rules the kernel refused, kept out of
// the rules in the state it was refused in.
type quarantined struct {
	svc    ServicePort
	eps    []Endpoint
	reason string
}

// maxBisectTests bounds the test restores one bisection may run.
const maxBisectTests = 64

// releaseAndFilterQuarantine releases from quarantine the Service ports
// that changed since they were refused (or are gone), so they are tried
// again, and returns the snapshot without the ones still held.
func (s *Syncer) releaseAndFilterQuarantine(snap *Snapshot) *Snapshot {
	if len(s.quarantine) == 0 {
		return snap
	}
	out := *snap
	out.order = nil
	out.Services = make(map[ServicePortName]*ServicePort, len(snap.Services))
	for n, sp := range snap.Services {
		q, ok := s.quarantine[n]
		if ok && reflect.DeepEqual(q.svc, *sp) && reflect.DeepEqual(q.eps, snap.Endpoints[n]) {
			continue
		}
		delete(s.quarantine, n)
		out.Services[n] = sp
	}
	for n := range s.quarantine {
		if _, ok := snap.Services[n]; !ok {
			delete(s.quarantine, n) // the Service is gone
		}
	}
	return &out
}

// subset is the snapshot with only the given Service ports.
func subset(snap *Snapshot, names []ServicePortName) *Snapshot {
	out := *snap
	out.Services = make(map[ServicePortName]*ServicePort, len(names))
	for _, n := range names {
		out.Services[n] = snap.Services[n]
	}
	return &out
}

// findOffenders bisects the snapshot's Service ports with test restores
// (iptables-restore --test: nothing is committed) to find those whose rules
// the kernel refuses. It returns nothing when the failure cannot be pinned
// on single Service ports: the fixed chains fail alone, the whole batch
// passes, or only a combination fails.
func (s *Syncer) findOffenders(ctx context.Context, snap *Snapshot) map[ServicePortName]error {
	tests := 0
	test := func(names []ServicePortName) error {
		tests++
		text, _ := fullRestore(Render(subset(snap, names), s.Config), nil, nil, nil)
		hctx, cancel := s.hostCtx(ctx)
		defer cancel()
		return s.Host.TestRestore(hctx, text)
	}
	all := snap.SortedNames()
	if len(all) == 0 || test(nil) != nil || test(all) == nil {
		return nil
	}
	bad := map[ServicePortName]error{}
	var search func(set []ServicePortName)
	search = func(set []ServicePortName) {
		if len(set) == 0 || tests >= maxBisectTests {
			return
		}
		err := test(set)
		if err == nil {
			return
		}
		if len(set) == 1 {
			bad[set[0]] = err
			return
		}
		mid := len(set) / 2
		search(set[:mid])
		search(set[mid:])
	}
	mid := len(all) / 2
	search(all[:mid])
	search(all[mid:])
	return bad
}

// Quarantined lists the Service ports kept out of the rules, with why.
func (s *Syncer) Quarantined() map[ServicePortName]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[ServicePortName]string, len(s.quarantine))
	for n, q := range s.quarantine {
		out[n] = q.reason
	}
	return out
}

func sortedKeys(m map[ServicePortName]error) []ServicePortName {
	out := make([]ServicePortName, 0, len(m))
	for n := range m {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return lessName(out[i], out[j]) })
	return out
}
