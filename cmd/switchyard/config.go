package main

import (
	"fmt"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	kpconfig "k8s.io/kube-proxy/config/v1alpha1"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// configAPIVersion and configKind identify kube-proxy's configuration file.
const (
	configAPIVersion = "kubeproxy.config.k8s.io/v1alpha1"
	configKind       = "KubeProxyConfiguration"
)

// setting is one file field that maps onto one of our flags.
type setting struct {
	field string // as in the file, e.g. "iptables.masqueradeBit"
	flag  string
	value string
	set   bool // the file gives a value
}

// loadConfigFile reads kube-proxy's KubeProxyConfiguration, unchanged, and
// sets every flag the file gives a value for and the command line did not
// (flags override the file). Fields that do not apply to switchyard are
// named in the returned warning. Unknown keys and bad values are errors
// naming the field.
func loadConfigFile(path string, fs *pflag.FlagSet) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", usagef("--config: %v", err)
	}
	var c kpconfig.KubeProxyConfiguration
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return "", usagef("--config %s: %s", path, strings.ReplaceAll(err.Error(), "\n", " "))
	}
	// Case-sensitive and strict, as the API server decodes: a misspelt or
	// unknown key is an error, not silently ignored.
	strict, err := sigsjson.UnmarshalStrict(js, &c, sigsjson.DisallowUnknownFields, sigsjson.DisallowDuplicateFields)
	if err == nil && len(strict) > 0 {
		err = strict[0]
	}
	if err != nil {
		return "", usagef("--config %s: %s", path, strings.ReplaceAll(err.Error(), "\n", " "))
	}
	if c.APIVersion != configAPIVersion || c.Kind != configKind {
		return "", usagef("--config %s: apiVersion/kind is %q/%q, want %s/%s", path, c.APIVersion, c.Kind, configAPIVersion, configKind)
	}
	bad := func(field, format string, args ...any) error {
		return usagef("--config %s: %s: %s", path, field, fmt.Sprintf(format, args...))
	}
	if b := c.IPTables.MasqueradeBit; b != nil && (*b < 0 || *b > 31) {
		return "", bad("iptables.masqueradeBit", "%d is not between 0 and 31", *b)
	}
	for field, v := range map[string]*int32{"conntrack.maxPerCore": c.Conntrack.MaxPerCore, "conntrack.min": c.Conntrack.Min} {
		if v != nil && *v < 0 {
			return "", bad(field, "%d is negative", *v)
		}
	}
	var settings []setting
	add := func(field, flag, value string, set bool) {
		settings = append(settings, setting{field, flag, value, set})
	}

	add("hostnameOverride", "hostname-override", c.HostnameOverride, c.HostnameOverride != "")
	add("clusterCIDR", "cluster-cidr", c.ClusterCIDR, c.ClusterCIDR != "")
	add("healthzBindAddress", "healthz-bind-address", c.HealthzBindAddress, c.HealthzBindAddress != "")
	add("metricsBindAddress", "metrics-bind-address", c.MetricsBindAddress, c.MetricsBindAddress != "")
	add("enableProfiling", "profiling", strconv.FormatBool(c.EnableProfiling), c.EnableProfiling)
	add("nodePortAddresses", "nodeport-addresses", strings.Join(c.NodePortAddresses, ","), len(c.NodePortAddresses) > 0)
	add("detectLocalMode", "detect-local-mode", string(c.DetectLocalMode), c.DetectLocalMode != "")
	add("detectLocal.bridgeInterface", "pod-bridge-interface", c.DetectLocal.BridgeInterface, c.DetectLocal.BridgeInterface != "")
	add("detectLocal.interfaceNamePrefix", "pod-interface-name-prefix", c.DetectLocal.InterfaceNamePrefix, c.DetectLocal.InterfaceNamePrefix != "")
	add("iptables.masqueradeAll", "masquerade-all", "true", c.IPTables.MasqueradeAll)
	if b := c.IPTables.MasqueradeBit; b != nil {
		add("iptables.masqueradeBit", "iptables-masquerade-bit", strconv.Itoa(int(*b)), true)
	}
	if b := c.IPTables.LocalhostNodePorts; b != nil {
		add("iptables.localhostNodePorts", "iptables-localhost-nodeports", strconv.FormatBool(*b), true)
	}
	add("clientConnection.kubeconfig", "kubeconfig", c.ClientConnection.Kubeconfig, c.ClientConnection.Kubeconfig != "")
	add("clientConnection.contentType", "kube-api-content-type", c.ClientConnection.ContentType, c.ClientConnection.ContentType != "")
	add("clientConnection.qps", "kube-api-qps", strconv.FormatFloat(float64(c.ClientConnection.QPS), 'f', -1, 32), c.ClientConnection.QPS != 0)
	add("clientConnection.burst", "kube-api-burst", strconv.Itoa(int(c.ClientConnection.Burst)), c.ClientConnection.Burst != 0)
	if v := c.Conntrack.MaxPerCore; v != nil {
		add("conntrack.maxPerCore", "conntrack-max-per-core", strconv.Itoa(int(*v)), true)
	}
	if v := c.Conntrack.Min; v != nil {
		add("conntrack.min", "conntrack-min", strconv.Itoa(int(*v)), true)
	}
	add("conntrack.tcpBeLiberal", "conntrack-tcp-be-liberal", "true", c.Conntrack.TCPBeLiberal)
	// A duration is given when non-zero, or, for the pointer fields, when
	// present at all (0 there means "leave the kernel's value").
	type duration struct {
		field, flag string
		d           time.Duration
		set         bool
	}
	durations := []duration{
		{"iptables.syncPeriod", "iptables-sync-period", c.IPTables.SyncPeriod.Duration, c.IPTables.SyncPeriod.Duration != 0},
		{"iptables.minSyncPeriod", "iptables-min-sync-period", c.IPTables.MinSyncPeriod.Duration, c.IPTables.MinSyncPeriod.Duration != 0},
		{"conntrack.udpTimeout", "conntrack-udp-timeout", c.Conntrack.UDPTimeout.Duration, c.Conntrack.UDPTimeout.Duration != 0},
		{"conntrack.udpStreamTimeout", "conntrack-udp-timeout-stream", c.Conntrack.UDPStreamTimeout.Duration, c.Conntrack.UDPStreamTimeout.Duration != 0},
	}
	if d := c.Conntrack.TCPEstablishedTimeout; d != nil {
		durations = append(durations, duration{"conntrack.tcpEstablishedTimeout", "conntrack-tcp-timeout-established", d.Duration, true})
	}
	if d := c.Conntrack.TCPCloseWaitTimeout; d != nil {
		durations = append(durations, duration{"conntrack.tcpCloseWaitTimeout", "conntrack-tcp-timeout-close-wait", d.Duration, true})
	}
	for _, d := range durations {
		if d.d < 0 {
			return "", bad(d.field, "%s is negative", d.d.String())
		}
		add(d.field, d.flag, d.d.String(), d.set)
	}

	for _, s := range settings {
		if !s.set || fs.Lookup(s.flag) == nil || fs.Changed(s.flag) {
			continue
		}
		if err := fs.Set(s.flag, s.value); err != nil {
			return "", bad(s.field, "%q: %v", s.value, err)
		}
	}
	return ignoredFields(&c), nil
}

// ignoredFields names the fields the file sets that switchyard does not
// use, for one warning.
func ignoredFields(c *kpconfig.KubeProxyConfiguration) string {
	bind := c.BindAddress
	if bind == "0.0.0.0" || bind == "::" {
		bind = "" // kubeadm's default: nothing to warn about
	}
	logging := c.Logging.Verbosity != 0 || (c.Logging.Format != "" && c.Logging.Format != "text")
	candidates := map[string]any{
		"ipvs": c.IPVS, "nftables": c.NFTables, "winkernel": c.Winkernel, "bindAddress": bind,
		"bindAddressHardFail":         c.BindAddressHardFail,
		"showHiddenMetricsForVersion": c.ShowHiddenMetricsForVersion, "oomScoreAdj": c.OOMScoreAdj,
		"configSyncPeriod": c.ConfigSyncPeriod, "portRange": c.PortRange, "featureGates": c.FeatureGates,
		"logging": logging, "windowsRunAsService": c.WindowsRunAsService,
		"clientConnection.acceptContentTypes": c.ClientConnection.AcceptContentTypes,
	}
	var set []string
	if c.Mode != "" && c.Mode != "iptables" {
		set = append(set, fmt.Sprintf("mode (%s: switchyard always programs iptables)", c.Mode))
	}
	for name, v := range candidates {
		if !reflect.ValueOf(v).IsZero() {
			set = append(set, name)
		}
	}
	if len(set) == 0 {
		return ""
	}
	sort.Strings(set)
	return "these KubeProxyConfiguration fields do not apply to switchyard and are ignored: " + strings.Join(set, ", ")
}
