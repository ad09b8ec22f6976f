package proxier

import (
	"fmt"
	"net/netip"

	v1 "k8s.io/api/core/v1"
)

// RenderConfig holds the node-wide facts and flags that shape the rules for
// one IP family.
type RenderConfig struct {
	Family v1.IPFamily
	// ClusterCIDR, when valid, is the pod network of this family.
	ClusterCIDR netip.Prefix
	// DetectLocal decides which traffic comes from a pod (see LocalDetector):
	// traffic to a ClusterIP from anything else is masqueraded, and pod
	// traffic to an external address of an externalTrafficPolicy Local
	// Service is short-circuited.
	DetectLocal   LocalDetector
	MasqueradeAll bool
	MasqueradeBit int
	// NodePortAddresses limits the local addresses that accept NodePort
	// traffic to those inside these CIDRs; empty means every local address.
	NodePortAddresses []netip.Prefix
	// NFAcctInvalid and NFAcctLocalhost count the packets the INVALID drop
	// drops and the localhost NodePort packets accepted into kube-proxy's
	// nfacct counters (set only once the counters exist: a rule naming a
	// missing one is refused).
	NFAcctInvalid, NFAcctLocalhost bool
	// PrimaryIPOverride, when valid and of this family, is the node's
	// primary address instead of its Node object's first one (kube-proxy's
	// --bind-address).
	PrimaryIPOverride netip.Addr
	// NodePortPrimary limits NodePorts to the node's primary address (the
	// first address of this family in its Node object).
	NodePortPrimary bool
	// LocalhostNodePorts lets NodePorts answer on 127.0.0.0/8 (IPv4 only,
	// and only when NodePortAddresses is empty or includes loopback).
	LocalhostNodePorts bool
	// ConntrackTCPBeLiberal means nf_conntrack_tcp_be_liberal is set: then
	// out-of-window packets are not INVALID and the INVALID drop is left out.
	ConntrackTCPBeLiberal bool
	// DispatchLeafSize is the most rules a dispatch chain holds before it
	// becomes a tree (see dispatch.go); 0 means DefaultDispatchLeafSize.
	// Tests set it small to put every shape through the tree.
	DispatchLeafSize int

	// largeCluster is set by the renderer when the snapshot has more than
	// LargeClusterEndpoints endpoints of the family; being part of the
	// config, it is part of the renderer's cache key.
	largeCluster bool
}

// Local-traffic detection modes, as kube-proxy's --detect-local-mode.
const (
	DetectClusterCIDR         = "ClusterCIDR"
	DetectNodeCIDR            = "NodeCIDR"
	DetectBridgeInterface     = "BridgeInterface"
	DetectInterfaceNamePrefix = "InterfaceNamePrefix"
)

// LocalDetector says how to recognise traffic from this node's pods. The
// zero value (and ClusterCIDR mode without a CIDR) detects nothing.
type LocalDetector struct {
	// Mode is one of the Detect* constants; empty means ClusterCIDR.
	Mode string
	// Interface is the bridge (BridgeInterface) or the interface name
	// prefix (InterfaceNamePrefix).
	Interface string
}

// localMatch returns the match arguments for "from a pod" and "not from a
// pod", or ok=false when nothing can be detected (yet: NodeCIDR mode waits
// for the Node's podCIDRs).
func localMatch(snap *Snapshot, cfg RenderConfig) (local, notLocal []string, ok bool) {
	switch cfg.DetectLocal.Mode {
	case "", DetectClusterCIDR:
		if cfg.ClusterCIDR.IsValid() {
			return []string{"-s", cfg.ClusterCIDR.String()}, []string{"!", "-s", cfg.ClusterCIDR.String()}, true
		}
	case DetectNodeCIDR:
		for _, p := range snap.Node.PodCIDRs {
			if p.Addr().Is4() == (cfg.Family == v1.IPv4Protocol) {
				return []string{"-s", p.String()}, []string{"!", "-s", p.String()}, true
			}
		}
	case DetectBridgeInterface:
		if cfg.DetectLocal.Interface != "" {
			return []string{"-i", cfg.DetectLocal.Interface}, []string{"!", "-i", cfg.DetectLocal.Interface}, true
		}
	case DetectInterfaceNamePrefix:
		if cfg.DetectLocal.Interface != "" {
			return []string{"-i", cfg.DetectLocal.Interface + "+"}, []string{"!", "-i", cfg.DetectLocal.Interface + "+"}, true
		}
	}
	return nil, nil, false
}

// MasqMark is the mark value of the masquerade bit, e.g. "0x4000".
func (c RenderConfig) MasqMark() string { return fmt.Sprintf("%#x", uint32(1)<<c.MasqueradeBit) }

// LocalhostNodePortsActive says whether NodePorts answer on loopback with
// this config: it is then that route_localnet is needed.
func (c RenderConfig) LocalhostNodePortsActive() bool {
	if !c.LocalhostNodePorts || c.Family != v1.IPv4Protocol || c.NodePortPrimary {
		return false
	}
	if len(c.NodePortAddresses) == 0 {
		return true
	}
	for _, p := range c.NodePortAddresses {
		if p.Contains(netip.MustParseAddr("127.0.0.1")) {
			return true
		}
	}
	return false
}

// PrimaryIP is the node's primary address of the config's family: the
// override when one is set for this family, else the Node object's first.
func (c RenderConfig) PrimaryIP(n NodeInfo) (netip.Addr, bool) {
	if c.PrimaryIPOverride.IsValid() && familyOf(c.PrimaryIPOverride) == c.Family {
		return c.PrimaryIPOverride, true
	}
	return n.PrimaryIP(c.Family)
}
