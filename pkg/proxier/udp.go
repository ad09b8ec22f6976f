package proxier

import (
	"context"
	"maps"
	"net/netip"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/switchyard-proxy/switchyard/pkg/conntrack"
	"github.com/switchyard-proxy/switchyard/pkg/metrics"
)

// udpFrontends are the addresses UDP clients send to (cluster IPs,
// external IPs, LB IPs, NodePorts) with the endpoints allowed to answer.
type udpFrontends struct {
	addrs     map[netip.AddrPort]map[netip.AddrPort]bool
	nodePorts map[uint16]map[netip.AddrPort]bool
}

func (u udpFrontends) empty() bool { return len(u.addrs) == 0 && len(u.nodePorts) == 0 }

// udpFrontendsOf lists the UDP frontends of one family with their serving
// endpoints. A frontend without endpoints has an empty set: then every
// translated flow to it is stale.
func udpFrontendsOf(snap *Snapshot, family v1.IPFamily) udpFrontends {
	u := udpFrontends{addrs: map[netip.AddrPort]map[netip.AddrPort]bool{}, nodePorts: map[uint16]map[netip.AddrPort]bool{}}
	for name, svc := range snap.Services {
		if name.Protocol != v1.ProtocolUDP {
			continue
		}
		vip, ok := svc.ClusterIP(family)
		if !ok {
			continue
		}
		eps := map[netip.AddrPort]bool{}
		for _, ep := range snap.Endpoints[name] {
			if ep.Serving && familyOf(ep.Addr) == family {
				eps[netip.AddrPortFrom(ep.Addr, uint16(ep.Port))] = true
			}
		}
		port := uint16(svc.Port)
		u.addrs[netip.AddrPortFrom(vip, port)] = eps
		for _, ip := range append(familyAddrs(svc.ExternalIPs, family), familyAddrs(svc.LoadBalancerIPs, family)...) {
			u.addrs[netip.AddrPortFrom(ip, port)] = eps
		}
		if svc.NodePort != 0 {
			u.nodePorts[uint16(svc.NodePort)] = eps
		}
	}
	return u
}

// withGone returns u plus the frontends of prev that u no longer has (a
// Service or one of its addresses deleted), with no endpoints, so their
// flows go too. u itself is not changed.
func (u udpFrontends) withGone(prev udpFrontends) udpFrontends {
	out := udpFrontends{addrs: maps.Clone(u.addrs), nodePorts: maps.Clone(u.nodePorts)}
	for a := range prev.addrs {
		if _, ok := out.addrs[a]; !ok {
			out.addrs[a] = map[netip.AddrPort]bool{}
		}
	}
	for p := range prev.nodePorts {
		if _, ok := out.nodePorts[p]; !ok {
			out.nodePorts[p] = map[netip.AddrPort]bool{}
		}
	}
	return out
}

// stale says whether a UDP flow must be deleted: it was sent to one of our
// frontends and its replies come from anything but a current serving
// endpoint. That covers flows to endpoints that are gone, flows created
// while a Service had no endpoints (never translated: the reply source is
// the frontend itself), and flows of Services that went to zero endpoints
// or were deleted. A flow to a current endpoint is never touched, so a
// restart does not disturb live UDP sessions.
func (u udpFrontends) stale(f conntrack.Flow) bool {
	if eps, ok := u.addrs[f.OrigDst]; ok {
		return !eps[f.ReplySrc]
	}
	if eps, ok := u.nodePorts[f.OrigDst.Port()]; ok {
		return !eps[f.ReplySrc]
	}
	return false
}

// mayHaveStale reports whether going from prev to u can have left stale
// flows: a frontend or one of its endpoints went, or a frontend is new or
// went from no endpoints to some.
func (u udpFrontends) mayHaveStale(prev udpFrontends) bool {
	return frontendsChanged(prev.addrs, u.addrs) || frontendsChanged(prev.nodePorts, u.nodePorts)
}

func frontendsChanged[K comparable](prev, cur map[K]map[netip.AddrPort]bool) bool {
	for k, was := range prev {
		now, ok := cur[k]
		if !ok {
			return true
		}
		for ep := range was {
			if !now[ep] {
				return true
			}
		}
	}
	for k, now := range cur {
		was, ok := prev[k]
		if !ok || len(was) == 0 && len(now) > 0 {
			return true
		}
	}
	return false
}

// cleanConntrack deletes stale UDP flows, now that the rules send new
// packets to the right place. Listing the conntrack table costs in
// proportion to the whole table (a busy node holds hundreds of thousands of
// TCP entries), so a partial sync lists it only when a flow can have become
// stale since the last clean-up: a UDP frontend or one of its endpoints
// went, or a frontend is new or got its first endpoints (flows sent before
// its rules were programmed are untranslated); a full sync always does.
// Failures are logged: the next sync retries.
func (s *Syncer) cleanConntrack(ctx context.Context, snap *Snapshot, full bool) {
	if s.Conntrack == nil {
		return
	}
	cur := udpFrontendsOf(snap, s.Config.Family)
	check := cur.withGone(s.lastUDP)
	if check.empty() || (!full && !s.udpRetry && !cur.mayHaveStale(s.lastUDP)) {
		s.lastUDP = cur
		return
	}
	start := time.Now()
	n, err := s.Conntrack.DeleteUDP(s.Config.Family == v1.IPv6Protocol, check.stale)
	fam := string(s.Config.Family)
	metrics.ConntrackReconcileDuration.WithLabelValues(fam).Observe(time.Since(start).Seconds())
	metrics.ConntrackDeleted.WithLabelValues(fam).Add(float64(n))
	logger := klog.FromContext(ctx)
	if err != nil {
		// Keep the gone frontends so the next sync looks for them again.
		s.lastUDP, s.udpRetry = check, true
		logger.Error(err, "Deleting stale UDP conntrack entries failed; will retry on the next sync", "family", s.Config.Family, "deleted", n)
		return
	}
	s.lastUDP, s.udpRetry = cur, false
	if n > 0 {
		logger.V(2).Info("Deleted stale UDP conntrack entries", "family", s.Config.Family, "deleted", n, "elapsed", time.Since(start))
	}
}
