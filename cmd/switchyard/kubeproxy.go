package main

import (
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/switchyard-proxy/switchyard/pkg/features"
)

// kubeProxyOptions are the kube-proxy v1.36 flags that have no other home:
// the ones switchyard honours beyond the rule flags, and the ones it
// accepts so a kube-proxy DaemonSet's command line starts unchanged.
type kubeProxyOptions struct {
	bindAddress     string
	bindHardFail    bool
	cleanup         bool
	initOnly        bool
	writeConfigTo   string
	featureGates    mapStringBool
	proxyMode       string
	oomScoreAdj     int32
	configSync      time.Duration
	showHidden      string
	healthzPort     int32
	metricsPort     int32
	loggingFormat   string
	logFlush        time.Duration
	printVersion    string
	ignoredStrings  map[string]*string // flags accepted and ignored, by name
	acceptedOnly    []string           // their names, for the warning
	effectiveGates  features.Gates
	primaryOverride netip.Addr
}

// Flags that do not apply to an iptables proxy: accepted, and named in one
// warning when given.
var (
	ipvsFlags    = []string{"ipvs-exclude-cidrs", "ipvs-min-sync-period", "ipvs-scheduler", "ipvs-strict-arp", "ipvs-sync-period", "ipvs-tcp-timeout", "ipvs-tcpfin-timeout", "ipvs-udp-timeout"}
	windowsFlags = []string{"windows-service", "source-vip", "network-name", "enable-dsr", "root-hnsendpoint-name", "forward-healthcheck-vip"}
	// The alpha logging options kube-proxy gates behind LoggingAlphaOptions.
	alphaLogFlags = []string{"log-json-info-buffer-size", "log-json-split-stream", "log-text-info-buffer-size", "log-text-split-stream"}
	// Read by kube-proxy's binary for nothing it uses on Linux.
	noopFlags = []string{"boot-id-file", "machine-id-file"}
)

// boolFlags among the accepted-only flags (they take no value).
var boolFlags = map[string]bool{"ipvs-strict-arp": true, "windows-service": true, "enable-dsr": true, "forward-healthcheck-vip": true, "log-json-split-stream": true, "log-text-split-stream": true}

func (k *kubeProxyOptions) AddFlags(fs *pflag.FlagSet) {
	k.featureGates = mapStringBool{}
	fs.StringVar(&k.bindAddress, "bind-address", "0.0.0.0", "Overrides the node's primary IP (as kube-proxy's flag of that name: no socket is bound to it); 0.0.0.0 or :: means the Node object's first address")
	fs.BoolVar(&k.bindHardFail, "bind-address-hard-fail", false, "Exit when the healthz or metrics port cannot be bound (default: log it and retry while proxying goes on)")
	fs.BoolVar(&k.cleanup, "cleanup", false, "Remove switchyard's rules and upstream kube-proxy's (iptables and nftables modes), then exit")
	fs.BoolVar(&k.initOnly, "init-only", false, "Do the set-up that needs full root (conntrack and route_localnet sysctls) and exit; the daemon then needs only CAP_NET_ADMIN")
	fs.StringVar(&k.writeConfigTo, "write-config-to", "", "Write the effective configuration as a KubeProxyConfiguration to this file and exit")
	fs.Var(&k.featureGates, "feature-gates", "kube-proxy's feature gates (Name=true|false,...); AllowServiceExternalIPs=false stops programming externalIPs, the others do not change an iptables proxy and are named in a warning")
	fs.StringVar(&k.proxyMode, "proxy-mode", "", "kube-proxy's mode: iptables (or empty) runs; nftables and ipvs run iptables mode with a warning (nftables-mode tables are removed at start); kernelspace is refused")
	fs.Int32Var(&k.oomScoreAdj, "oom-score-adj", -999, "The oom_score_adj of this process, in [-1000, 1000]; one that cannot be set is logged")
	fs.DurationVar(&k.configSync, "config-sync-period", 15*time.Minute, "How often the informers re-deliver every object (resync)")
	fs.StringVar(&k.showHidden, "show-hidden-metrics-for-version", "", "The previous minor version (1.35) whose hidden metrics to show; switchyard hides none")
	fs.Int32Var(&k.healthzPort, "healthz-port", 10256, "The health check port (0 disables); used only when --healthz-bind-address has no port")
	_ = fs.MarkDeprecated("healthz-port", "This flag is deprecated and will be removed in a future release. Please use --healthz-bind-address instead.")
	fs.Int32Var(&k.metricsPort, "metrics-port", 10249, "The metrics port (0 disables); used only when --metrics-bind-address has no port")
	_ = fs.MarkDeprecated("metrics-port", "This flag is deprecated and will be removed in a future release. Please use --metrics-bind-address instead.")
	fs.StringVar(&k.loggingFormat, "logging-format", "text", "Log format: text or json")
	fs.DurationVar(&k.logFlush, "log-flush-frequency", 5*time.Second, "The longest time between log flushes")
	fs.StringVar(&k.printVersion, "version", "", "Print the version and exit (--version or --version=raw)")
	fs.Lookup("version").NoOptDefVal = "true"
	k.ignoredStrings = map[string]*string{}
	accepted := func(names []string, why string) {
		for _, n := range names {
			s := new(string)
			k.ignoredStrings[n] = s
			fs.StringVar(s, n, "", "Accepted for kube-proxy compatibility and ignored: "+why)
			if boolFlags[n] {
				fs.Lookup(n).NoOptDefVal = "true"
			}
		}
	}
	accepted(ipvsFlags, "switchyard programs iptables, not IPVS")
	accepted(windowsFlags, "a Windows-only kube-proxy flag")
	accepted(alphaLogFlags, "an alpha logging option switchyard does not implement")
	accepted(noopFlags, "kube-proxy reads nothing from it on Linux")
	accepted([]string{"proxy-port-range"}, "the userspace proxy's range, long removed (kube-proxy v1.36 refuses the flag)")
}

// Complete checks the values and derives the ones the daemon reads.
func (k *kubeProxyOptions) Complete(fs *pflag.FlagSet) (warnings []string, err error) {
	k.acceptedOnly = nil
	for n := range k.ignoredStrings {
		if fs.Changed(n) {
			k.acceptedOnly = append(k.acceptedOnly, "--"+n)
		}
	}
	sort.Strings(k.acceptedOnly)
	if len(k.acceptedOnly) > 0 {
		warnings = append(warnings, "these kube-proxy flags do not apply to switchyard and are ignored: "+strings.Join(k.acceptedOnly, ", "))
	}
	switch strings.ToLower(k.proxyMode) {
	case "", "iptables":
	case "nftables", "ipvs":
		warnings = append(warnings, fmt.Sprintf("proxy mode %q: switchyard programs iptables; running in iptables mode (kube-proxy's nftables-mode tables are removed at start; IPVS virtual servers an ipvs-mode kube-proxy left are not: see docs/migrating-from-kube-proxy.md)", k.proxyMode))
	case "kernelspace":
		return nil, usagef("--proxy-mode: kernelspace is kube-proxy's Windows mode; switchyard runs on Linux and programs iptables")
	default:
		return nil, usagef("--proxy-mode: %q is not a valid proxy mode (iptables, ipvs or nftables)", k.proxyMode)
	}
	if k.oomScoreAdj < -1000 || k.oomScoreAdj > 1000 {
		return nil, usagef("--oom-score-adj: %d is not within [-1000, 1000]", k.oomScoreAdj)
	}
	if k.configSync <= 0 {
		return nil, usagef("--config-sync-period: must be greater than 0")
	}
	if err := validShowHidden(k.showHidden); err != nil {
		return nil, err
	}
	switch k.loggingFormat {
	case "text", "json":
	default:
		return nil, usagef("--logging-format: %q is not text or json", k.loggingFormat)
	}
	if k.logFlush <= 0 {
		return nil, usagef("--log-flush-frequency: must be greater than 0")
	}
	a, err := netip.ParseAddr(strings.TrimSpace(k.bindAddress))
	if err != nil {
		return nil, usagef("--bind-address: %q is not an IP address", k.bindAddress)
	}
	k.primaryOverride = netip.Addr{}
	if !a.IsUnspecified() {
		k.primaryOverride = a.Unmap()
	}
	gates, err := features.New(k.featureGates)
	if err != nil {
		return nil, usagef("--feature-gates: %v", err)
	}
	k.effectiveGates = gates
	warnings = append(warnings, gates.Warnings...)
	return warnings, nil
}

// validShowHidden accepts what kube-proxy v1.36 accepts: empty, or the
// previous minor version.
func validShowHidden(v string) error {
	if v == "" {
		return nil
	}
	major, minor, ok := strings.Cut(v, ".")
	mj, err1 := strconv.Atoi(major)
	mn, err2 := strconv.Atoi(minor)
	if !ok || err1 != nil || err2 != nil {
		return usagef("--show-hidden-metrics-for-version: %q is not MAJOR.MINOR", v)
	}
	if mj != 1 || mn != 35 {
		return usagef("--show-hidden-metrics-for-version: only the previous minor version (1.35) is allowed, not %s", v)
	}
	return nil
}

// withPort is kube-proxy's rule for the deprecated port flags: a port of 0
// disables the server; an address without a port gets this one.
func withPort(addr string, port int32) string {
	if port == 0 {
		return ""
	}
	if addr == "" {
		return addr
	}
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	return net.JoinHostPort(strings.Trim(addr, "[]"), strconv.Itoa(int(port)))
}

// mapStringBool is --feature-gates: "Name=true,Name=false", repeated flags
// merging, as kube-proxy's flag does.
type mapStringBool map[string]bool

func (m *mapStringBool) String() string {
	if m == nil || len(*m) == 0 {
		return ""
	}
	var parts []string
	for k, v := range *m {
		parts = append(parts, fmt.Sprintf("%s=%t", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func (m *mapStringBool) Set(s string) error {
	values, err := features.ParseFlag(s)
	if err != nil {
		return err
	}
	if *m == nil {
		*m = mapStringBool{}
	}
	for k, v := range values {
		(*m)[k] = v
	}
	return nil
}

func (m *mapStringBool) Type() string { return "mapStringBool" }

// reset empties it (the flag given on a command line that --config
// overrides).
func (m *mapStringBool) reset() { clear(*m) }
