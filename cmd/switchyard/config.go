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

// configMappedFlags are the kube-proxy flags whose setting lives in the
// config file. As in kube-proxy v1.36, when --config is given the file
// decides them all: one given on the command line as well is ignored (and,
// unlike kube-proxy, named in a warning). Not among them, so they still
// count with --config: --config, --hostname-override (it wins over the
// file), --master, the logging flags (they win over the file's logging),
// --cleanup, --init-only, --write-config-to, --version, and switchyard's own
// flags, which the file has no place for.
var configMappedFlags = append([]string{
	"feature-gates", "kubeconfig", "kube-api-content-type", "kube-api-burst", "kube-api-qps",
	"bind-address", "healthz-bind-address", "metrics-bind-address", "bind-address-hard-fail",
	"profiling", "show-hidden-metrics-for-version", "proxy-mode",
	"iptables-masquerade-bit", "masquerade-all", "iptables-localhost-nodeports",
	"iptables-sync-period", "iptables-min-sync-period",
	"detect-local-mode", "pod-bridge-interface", "pod-interface-name-prefix", "cluster-cidr",
	"nodeport-addresses", "oom-score-adj",
	"conntrack-max-per-core", "conntrack-min", "conntrack-tcp-timeout-established",
	"conntrack-tcp-timeout-close-wait", "conntrack-tcp-be-liberal", "conntrack-udp-timeout",
	"conntrack-udp-timeout-stream", "config-sync-period", "healthz-port", "metrics-port",
}, ipvsFlags...)

// loggingFlags win over the file's logging section when given.
var loggingFlags = map[string]string{"v": "logging.verbosity", "vmodule": "logging.vmodule", "logging-format": "logging.format", "log-flush-frequency": "logging.flushFrequency"}

// decodeConfig reads a KubeProxyConfiguration as kube-proxy does: strictly
// first (an unknown or duplicated key is an error); on a strict-decoding
// error, leniently (unknown keys dropped, the last duplicate wins) with a
// warning naming what was dropped, so a file written for an older
// kube-proxy with since-removed fields still starts. Anything else (bad
// YAML, a value of the wrong type, another kind) is an error.
func decodeConfig(path string) (*kpconfig.KubeProxyConfiguration, string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, "", usagef("--config: %v", err)
	}
	oneLine := func(err error) error {
		return usagef("--config %s: %s", path, strings.ReplaceAll(err.Error(), "\n", " "))
	}
	var c kpconfig.KubeProxyConfiguration
	var strictProblems []string
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		// Duplicate keys are a strict-decoding error; anything else is bad
		// YAML.
		lenient, lerr := yaml.YAMLToJSON(data)
		if lerr != nil {
			return nil, "", oneLine(err)
		}
		strictProblems = append(strictProblems, strings.ReplaceAll(err.Error(), "\n", " "))
		js = lenient
	}
	strict, err := sigsjson.UnmarshalStrict(js, &c, sigsjson.DisallowUnknownFields, sigsjson.DisallowDuplicateFields)
	if err != nil {
		return nil, "", oneLine(err)
	}
	for _, e := range strict {
		strictProblems = append(strictProblems, e.Error())
	}
	if c.APIVersion != configAPIVersion || c.Kind != configKind {
		return nil, "", usagef("--config %s: apiVersion/kind is %q/%q, want %s/%s", path, c.APIVersion, c.Kind, configAPIVersion, configKind)
	}
	warning := ""
	if len(strictProblems) > 0 {
		warning = fmt.Sprintf("using lenient decoding of %s as strict decoding failed (as kube-proxy does): %s", path, strings.Join(strictProblems, "; "))
	}
	return &c, warning, nil
}

// setting is one file field that maps onto one of our flags.
type setting struct {
	field string // as in the file, e.g. "iptables.masqueradeBit"
	flag  string
	value string
	set   bool // the file gives a value
}

// loadConfigFile applies kube-proxy's KubeProxyConfiguration to the flags
// with kube-proxy's precedence (see configMappedFlags): every config-mapped
// flag given on the command line is put back to its default, then each
// field the file gives a value for is set. It returns the decoded file and
// the warnings to log once: lenient decoding, ignored flags, fields that do
// not apply. Bad values are errors naming the field.
func loadConfigFile(path string, fs *pflag.FlagSet) (*kpconfig.KubeProxyConfiguration, []string, error) {
	c, lenient, err := decodeConfig(path)
	if err != nil {
		return nil, nil, err
	}
	var warnings []string
	if lenient != "" {
		warnings = append(warnings, lenient)
	}
	settings, err := fileSettings(path, c)
	if err != nil {
		return nil, nil, err
	}
	var ignored []string
	for _, name := range configMappedFlags {
		f := fs.Lookup(name)
		if f == nil || !f.Changed {
			continue
		}
		ignored = append(ignored, "--"+name)
		resetFlag(f)
	}
	if len(ignored) > 0 {
		warnings = append(warnings, "these flags are ignored because --config is given (kube-proxy takes them from the file): "+strings.Join(ignored, ", "))
	}
	for _, s := range settings {
		if !s.set || fs.Lookup(s.flag) == nil {
			continue
		}
		if _, logging := loggingFlags[s.flag]; (logging || s.flag == "hostname-override") && fs.Changed(s.flag) {
			continue // the command line wins
		}
		if err := fs.Set(s.flag, s.value); err != nil {
			return nil, nil, fieldError(path, s.field, "%q: %v", s.value, err)
		}
	}
	if w := ignoredFields(c); w != "" {
		warnings = append(warnings, w)
	}
	return c, warnings, nil
}

// fieldError is a usage error naming the file and the field.
func fieldError(path, field, format string, args ...any) error {
	return usagef("--config %s: %s: %s", path, field, fmt.Sprintf(format, args...))
}

// resetFlag puts a flag back to its default, as if not given.
func resetFlag(f *pflag.Flag) {
	switch v := f.Value.(type) {
	case *mapStringBool:
		v.reset()
	case pflag.SliceValue:
		_ = v.Replace(nil)
	default:
		_ = f.Value.Set(f.DefValue)
	}
	f.Changed = false
}

// fileSettings lists the flag each field the file sets stands for, after
// checking the values kube-proxy's validation would refuse.
func fileSettings(path string, c *kpconfig.KubeProxyConfiguration) ([]setting, error) {
	bad := func(field, format string, args ...any) error { return fieldError(path, field, format, args...) }
	if b := c.IPTables.MasqueradeBit; b != nil && (*b < 0 || *b > 31) {
		return nil, bad("iptables.masqueradeBit", "%d is not between 0 and 31", *b)
	}
	for field, v := range map[string]*int32{"conntrack.maxPerCore": c.Conntrack.MaxPerCore, "conntrack.min": c.Conntrack.Min} {
		if v != nil && *v < 0 {
			return nil, bad(field, "%d is negative", *v)
		}
	}
	if v := c.OOMScoreAdj; v != nil && (*v < -1000 || *v > 1000) {
		return nil, bad("oomScoreAdj", "%d is not within [-1000, 1000]", *v)
	}
	var settings []setting
	add := func(field, flag, value string, set bool) {
		settings = append(settings, setting{field, flag, value, set})
	}

	add("hostnameOverride", "hostname-override", c.HostnameOverride, c.HostnameOverride != "")
	add("clusterCIDR", "cluster-cidr", c.ClusterCIDR, c.ClusterCIDR != "")
	add("bindAddress", "bind-address", c.BindAddress, c.BindAddress != "")
	add("bindAddressHardFail", "bind-address-hard-fail", strconv.FormatBool(c.BindAddressHardFail), c.BindAddressHardFail)
	add("healthzBindAddress", "healthz-bind-address", c.HealthzBindAddress, c.HealthzBindAddress != "")
	add("metricsBindAddress", "metrics-bind-address", c.MetricsBindAddress, c.MetricsBindAddress != "")
	add("enableProfiling", "profiling", strconv.FormatBool(c.EnableProfiling), c.EnableProfiling)
	add("mode", "proxy-mode", string(c.Mode), c.Mode != "")
	add("showHiddenMetricsForVersion", "show-hidden-metrics-for-version", c.ShowHiddenMetricsForVersion, c.ShowHiddenMetricsForVersion != "")
	if len(c.FeatureGates) > 0 {
		var gates []string
		for k, v := range c.FeatureGates {
			gates = append(gates, fmt.Sprintf("%s=%t", k, v))
		}
		sort.Strings(gates)
		add("featureGates", "feature-gates", strings.Join(gates, ","), true)
	}
	if v := c.OOMScoreAdj; v != nil {
		add("oomScoreAdj", "oom-score-adj", strconv.Itoa(int(*v)), true)
	}
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
	add("clientConnection.acceptContentTypes", "kube-api-accept-content-types", c.ClientConnection.AcceptContentTypes, c.ClientConnection.AcceptContentTypes != "")
	add("clientConnection.qps", "kube-api-qps", strconv.FormatFloat(float64(c.ClientConnection.QPS), 'f', -1, 32), c.ClientConnection.QPS != 0)
	add("clientConnection.burst", "kube-api-burst", strconv.Itoa(int(c.ClientConnection.Burst)), c.ClientConnection.Burst != 0)
	if v := c.Conntrack.MaxPerCore; v != nil {
		add("conntrack.maxPerCore", "conntrack-max-per-core", strconv.Itoa(int(*v)), true)
	}
	if v := c.Conntrack.Min; v != nil {
		add("conntrack.min", "conntrack-min", strconv.Itoa(int(*v)), true)
	}
	add("conntrack.tcpBeLiberal", "conntrack-tcp-be-liberal", "true", c.Conntrack.TCPBeLiberal)
	// Logging: the command line's flags win (see loadConfigFile).
	add("logging.format", "logging-format", c.Logging.Format, c.Logging.Format != "")
	add("logging.verbosity", "v", strconv.Itoa(int(c.Logging.Verbosity)), c.Logging.Verbosity != 0)
	if len(c.Logging.VModule) > 0 {
		var items []string
		for _, m := range c.Logging.VModule {
			items = append(items, fmt.Sprintf("%s=%d", m.FilePattern, m.Verbosity))
		}
		add("logging.vmodule", "vmodule", strings.Join(items, ","), true)
	}
	durations, err := durationSettings(path, c)
	if err != nil {
		return nil, err
	}
	return append(settings, durations...), nil
}

// durationSettings are the duration fields' settings. A duration is given
// when non-zero, or, for the pointer fields, when present at all (0 there
// means "leave the kernel's value").
func durationSettings(path string, c *kpconfig.KubeProxyConfiguration) ([]setting, error) {
	type duration struct {
		field, flag string
		d           time.Duration
		set         bool
	}
	var settings []setting
	durations := []duration{
		{"iptables.syncPeriod", "iptables-sync-period", c.IPTables.SyncPeriod.Duration, c.IPTables.SyncPeriod.Duration != 0},
		{"iptables.minSyncPeriod", "iptables-min-sync-period", c.IPTables.MinSyncPeriod.Duration, c.IPTables.MinSyncPeriod.Duration != 0},
		{"conntrack.udpTimeout", "conntrack-udp-timeout", c.Conntrack.UDPTimeout.Duration, c.Conntrack.UDPTimeout.Duration != 0},
		{"conntrack.udpStreamTimeout", "conntrack-udp-timeout-stream", c.Conntrack.UDPStreamTimeout.Duration, c.Conntrack.UDPStreamTimeout.Duration != 0},
		{"configSyncPeriod", "config-sync-period", c.ConfigSyncPeriod.Duration, c.ConfigSyncPeriod.Duration != 0},
		{"logging.flushFrequency", "log-flush-frequency", c.Logging.FlushFrequency.Duration.Duration, c.Logging.FlushFrequency.Duration.Duration != 0},
	}
	if d := c.Conntrack.TCPEstablishedTimeout; d != nil {
		durations = append(durations, duration{"conntrack.tcpEstablishedTimeout", "conntrack-tcp-timeout-established", d.Duration, true})
	}
	if d := c.Conntrack.TCPCloseWaitTimeout; d != nil {
		durations = append(durations, duration{"conntrack.tcpCloseWaitTimeout", "conntrack-tcp-timeout-close-wait", d.Duration, true})
	}
	for _, d := range durations {
		if d.d < 0 {
			return nil, fieldError(path, d.field, "%s is negative", d.d.String())
		}
		settings = append(settings, setting{d.field, d.flag, d.d.String(), d.set})
	}
	return settings, nil
}

// ignoredFields names the fields the file sets that switchyard does not
// use, for one warning.
func ignoredFields(c *kpconfig.KubeProxyConfiguration) string {
	candidates := map[string]any{
		"ipvs": c.IPVS, "nftables": c.NFTables, "winkernel": c.Winkernel,
		"portRange": c.PortRange, "windowsRunAsService": c.WindowsRunAsService,
		"logging.options": c.Logging.Options,
	}
	var set []string
	for name, v := range candidates {
		if !reflect.ValueOf(v).IsZero() && (name != "logging.options" || !defaultLogOptions(c)) {
			set = append(set, name)
		}
	}
	if len(set) == 0 {
		return ""
	}
	sort.Strings(set)
	return "these KubeProxyConfiguration fields do not apply to switchyard and are ignored: " + strings.Join(set, ", ")
}

// defaultLogOptions is true when the logging options are the ones kubeadm
// writes (zero buffer sizes, no split streams): nothing to warn about.
func defaultLogOptions(c *kpconfig.KubeProxyConfiguration) bool {
	o := c.Logging.Options
	return !o.JSON.SplitStream && !o.Text.SplitStream && o.JSON.InfoBufferSize.Value() == 0 && o.Text.InfoBufferSize.Value() == 0
}
