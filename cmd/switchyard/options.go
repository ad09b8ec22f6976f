package main

import (
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/spf13/pflag"
	v1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/pkg/proxier"
)

// ruleOptions are the flags that shape rules, shared by the daemon, render
// and explain.
type ruleOptions struct {
	hostname      string
	clusterCIDR   string
	masqueradeAll bool
	masqBit       int
	proxyName     string
	nodePortAddrs []string
	localhostNP   bool
	detectLocal   string
	bridgeIf      string
	ifPrefix      string
	beLiberal     bool

	// completed
	cidrs           map[v1.IPFamily]netip.Prefix
	nodePortCIDRs   []netip.Prefix
	nodePortPrimary bool
}

func (o *ruleOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.hostname, "hostname-override", "", "The name of this node, as in its Node object (default: the host name)")
	fs.StringVar(&o.clusterCIDR, "cluster-cidr", "", "The pod network: one CIDR, or one per IP family separated by a comma. Traffic to a ClusterIP from outside it is masqueraded")
	fs.BoolVar(&o.masqueradeAll, "masquerade-all", false, "Masquerade all traffic sent to Service cluster IPs")
	fs.IntVar(&o.masqBit, "iptables-masquerade-bit", 14, "The bit of the packet mark that flags traffic for SNAT (0-31)")
	fs.StringVar(&o.proxyName, "service-proxy-name", "", "Handle only Services labelled service.kubernetes.io/service-proxy-name=NAME (default: only Services without that label)")
	fs.StringSliceVar(&o.nodePortAddrs, "nodeport-addresses", nil, "CIDRs of the local addresses that accept NodePort traffic, or \"primary\" for the node's primary IP per family (default: all local addresses)")
	fs.BoolVar(&o.localhostNP, "iptables-localhost-nodeports", true, "Let NodePorts answer on 127.0.0.1 (IPv4; needs route_localnet, set only then)")
	fs.StringVar(&o.detectLocal, "detect-local-mode", proxier.DetectClusterCIDR, "How to tell pod traffic: ClusterCIDR (from --cluster-cidr), NodeCIDR (the Node's podCIDRs), BridgeInterface (--pod-bridge-interface) or InterfaceNamePrefix (--pod-interface-name-prefix)")
	fs.StringVar(&o.bridgeIf, "pod-bridge-interface", "", "The bridge pods sit on, for --detect-local-mode=BridgeInterface")
	fs.StringVar(&o.ifPrefix, "pod-interface-name-prefix", "", "The prefix of pods' host-side interfaces, for --detect-local-mode=InterfaceNamePrefix")
	fs.BoolVar(&o.beLiberal, "conntrack-tcp-be-liberal", false, "Set nf_conntrack_tcp_be_liberal and leave out the rule dropping INVALID packets")
}

func (o *ruleOptions) Complete() error {
	if o.hostname == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("finding the host name (set --hostname-override): %w", err)
		}
		o.hostname = h
	}
	o.hostname = strings.ToLower(strings.TrimSpace(o.hostname))
	o.cidrs = map[v1.IPFamily]netip.Prefix{}
	o.nodePortCIDRs, o.nodePortPrimary = nil, false
	for _, s := range o.nodePortAddrs {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if s == "primary" {
			o.nodePortPrimary = true
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return usagef("--nodeport-addresses: %q is not a CIDR or \"primary\"", s)
		}
		o.nodePortCIDRs = append(o.nodePortCIDRs, p.Masked())
	}
	if o.nodePortPrimary && len(o.nodePortCIDRs) > 0 {
		return usagef("--nodeport-addresses: \"primary\" cannot be combined with CIDRs")
	}
	if strings.TrimSpace(o.clusterCIDR) == "" {
		return nil
	}
	for _, s := range strings.Split(o.clusterCIDR, ",") {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return usagef("--cluster-cidr: %q is not a CIDR", s)
		}
		fam := v1.IPv4Protocol
		if p.Addr().Is6() {
			fam = v1.IPv6Protocol
		}
		if _, dup := o.cidrs[fam]; dup {
			return usagef("--cluster-cidr: more than one %s CIDR", fam)
		}
		o.cidrs[fam] = p.Masked()
	}
	return nil
}

func (o *ruleOptions) Validate() error {
	if o.masqBit < 0 || o.masqBit > 31 {
		return usagef("--iptables-masquerade-bit: %d is not between 0 and 31", o.masqBit)
	}
	switch o.detectLocal {
	case proxier.DetectClusterCIDR, proxier.DetectNodeCIDR:
	case proxier.DetectBridgeInterface:
		if o.bridgeIf == "" {
			return usagef("--detect-local-mode=BridgeInterface needs --pod-bridge-interface")
		}
	case proxier.DetectInterfaceNamePrefix:
		if o.ifPrefix == "" {
			return usagef("--detect-local-mode=InterfaceNamePrefix needs --pod-interface-name-prefix")
		}
	default:
		return usagef("--detect-local-mode: %q is not ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix", o.detectLocal)
	}
	return nil
}

func (o *ruleOptions) detector() proxier.LocalDetector {
	d := proxier.LocalDetector{Mode: o.detectLocal}
	switch o.detectLocal {
	case proxier.DetectBridgeInterface:
		d.Interface = o.bridgeIf
	case proxier.DetectInterfaceNamePrefix:
		d.Interface = o.ifPrefix
	}
	return d
}

func (o *ruleOptions) filter() proxier.Filter { return proxier.Filter{ProxyName: o.proxyName} }

func (o *ruleOptions) renderConfig(family v1.IPFamily) proxier.RenderConfig {
	return proxier.RenderConfig{
		Family:                family,
		ClusterCIDR:           o.cidrs[family],
		DetectLocal:           o.detector(),
		ConntrackTCPBeLiberal: o.beLiberal,
		MasqueradeAll:         o.masqueradeAll,
		MasqueradeBit:         o.masqBit,
		NodePortAddresses:     o.nodePortCIDRs,
		NodePortPrimary:       o.nodePortPrimary,
		LocalhostNodePorts:    o.localhostNP,
	}
}

// parseFamily reads --ip-family.
func parseFamily(s string) (v1.IPFamily, error) {
	switch strings.ToLower(s) {
	case "ipv4", "4", "":
		return v1.IPv4Protocol, nil
	case "ipv6", "6":
		return v1.IPv6Protocol, nil
	}
	return "", usagef("--ip-family: %q is not ipv4 or ipv6", s)
}
