package proxier

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
)

// Chain names. Everything switchyard owns starts with ChainPrefix, never
// KUBE-, so it can be installed over a node that still has kube-proxy's rules.
const (
	ChainPrefix = "SWY-"

	// nat and filter
	ChainServices  = "SWY-SERVICES"
	ChainNodePorts = "SWY-NODEPORTS"
	// nat
	ChainPostrouting = "SWY-POSTROUTING"
	ChainMarkMasq    = "SWY-MARK-MASQ"
	// filter
	ChainExternalServices = "SWY-EXTERNAL-SERVICES"
	ChainForward          = "SWY-FORWARD"
	ChainProxyFirewall    = "SWY-PROXY-FIREWALL"
	ChainFirewall         = "SWY-FIREWALL"
	// ChainCanary is an empty chain in nat and filter: if it is gone,
	// someone flushed or rewrote the table, and a full sync follows.
	ChainCanary = "SWY-PROXY-CANARY"

	// kube-proxy's nfacct counter names (see RenderConfig.NFAcctInvalid).
	NFAcctInvalidDropped     = "ct_state_invalid_dropped_pkts"
	NFAcctLocalhostNodePorts = "localhost_nps_accepted_pkts"

	svcChainPrefix = "SWY-SVC-"
	svlChainPrefix = "SWY-SVL-"
	extChainPrefix = "SWY-EXT-"
	fwChainPrefix  = "SWY-FW-"
	sepChainPrefix = "SWY-SEP-"

	TableNAT    = "nat"
	TableFilter = "filter"
)

// BaseJumps are the jumps from built-in chains, as kube-proxy installs them,
// in the order they end up in each chain.
func BaseJumps() []iptables.Jump {
	newConn := []string{"-m", "conntrack", "--ctstate", "NEW"}
	j := func(table, chain, target, comment string, extra []string) iptables.Jump {
		return iptables.Jump{Table: table, Chain: chain, Target: target, Comment: comment, Extra: extra}
	}
	const (
		portals  = "switchyard service portals"
		external = "switchyard externally-visible service portals"
		lbfw     = "switchyard load balancer firewall"
		localnet = "switchyard localnet firewall"
	)
	return []iptables.Jump{
		j(TableNAT, "PREROUTING", ChainServices, portals, nil),
		j(TableNAT, "OUTPUT", ChainServices, portals, nil),
		j(TableNAT, "POSTROUTING", ChainPostrouting, "switchyard postrouting rules", nil),
		j(TableFilter, "INPUT", ChainFirewall, localnet, nil),
		j(TableFilter, "INPUT", ChainProxyFirewall, lbfw, newConn),
		j(TableFilter, "INPUT", ChainNodePorts, "switchyard health check service ports", nil),
		j(TableFilter, "INPUT", ChainExternalServices, external, newConn),
		j(TableFilter, "FORWARD", ChainProxyFirewall, lbfw, newConn),
		j(TableFilter, "FORWARD", ChainForward, "switchyard forwarding rules", nil),
		j(TableFilter, "FORWARD", ChainServices, portals, newConn),
		j(TableFilter, "FORWARD", ChainExternalServices, external, newConn),
		j(TableFilter, "OUTPUT", ChainFirewall, localnet, nil),
		j(TableFilter, "OUTPUT", ChainProxyFirewall, lbfw, newConn),
		j(TableFilter, "OUTPUT", ChainServices, portals, newConn),
	}
}

// TopLevelChains are the chains every sync keeps, per table.
func TopLevelChains() map[string][]string {
	return map[string][]string{
		TableNAT:    {ChainServices, ChainNodePorts, ChainPostrouting, ChainMarkMasq, ChainCanary},
		TableFilter: {ChainServices, ChainExternalServices, ChainForward, ChainNodePorts, ChainProxyFirewall, ChainFirewall, ChainCanary},
	}
}

func portHash(n ServicePortName) string { return hashParts(n.String(), protoLower(n.Protocol)) }

// ServiceChainName is the SWY-SVC- chain of a Service port (every usable
// endpoint): a hash of its name and protocol, stable across versions.
func ServiceChainName(n ServicePortName) string { return svcChainPrefix + portHash(n) }

// LocalChainName is the SWY-SVL- chain of a Service port (node-local endpoints).
func LocalChainName(n ServicePortName) string { return svlChainPrefix + portHash(n) }

// ExternalChainName is the SWY-EXT- chain of a Service port (external traffic).
func ExternalChainName(n ServicePortName) string { return extChainPrefix + portHash(n) }

// FirewallChainName is the SWY-FW- chain of a Service port (source ranges).
func FirewallChainName(n ServicePortName) string { return fwChainPrefix + portHash(n) }

// EndpointChainName is the SWY-SEP- chain of one endpoint of a Service port.
func EndpointChainName(n ServicePortName, ep Endpoint) string {
	return sepChainPrefix + hashParts(n.String(), protoLower(n.Protocol), ep.String())
}

func hashName(s string) string { return hashParts(s) }

// hashParts is hashName of the parts joined, without building the joined
// string: chain names are made for every endpoint of every sync that
// renders its Service.
func hashParts(parts ...string) string {
	var buf [256]byte
	b := buf[:0]
	for _, p := range parts {
		b = append(b, p...)
	}
	sum := sha256.Sum256(b)
	var enc [56]byte
	base32.StdEncoding.Encode(enc[:], sum[:])
	return string(enc[:16])
}

func chainLevel(name string) string {
	switch {
	case strings.HasPrefix(name, sepChainPrefix):
		return "endpoint"
	case strings.HasPrefix(name, svcChainPrefix), strings.HasPrefix(name, svlChainPrefix),
		strings.HasPrefix(name, extChainPrefix), strings.HasPrefix(name, fwChainPrefix):
		return "service"
	}
	return "top"
}

// portChains are a Service port's chain names, hashed once.
type portChains struct{ svc, svl, ext, fw string }

func chainsOf(n ServicePortName) portChains {
	h := portHash(n)
	return portChains{svc: svcChainPrefix + h, svl: svlChainPrefix + h, ext: extChainPrefix + h, fw: fwChainPrefix + h}
}
