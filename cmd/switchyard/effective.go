package main

import (
	"encoding/json"
	"fmt"
	"os"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"
	kpconfig "k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/switchyard-proxy/switchyard/pkg/proxier"
)

// effectiveConfig is the configuration switchyard runs with, as a
// KubeProxyConfiguration: what --write-config-to writes and /configz
// serves. Fields switchyard does not use keep what the config file gave
// (or their zero value).
func (o *daemonOptions) effectiveConfig() kpconfig.KubeProxyConfiguration {
	var c kpconfig.KubeProxyConfiguration
	if o.fileConfig != nil {
		c = *o.fileConfig.DeepCopy()
	}
	c.APIVersion, c.Kind = configAPIVersion, configKind
	c.FeatureGates = nil
	if len(o.kp.featureGates) > 0 {
		c.FeatureGates = map[string]bool{}
		for k, v := range o.kp.featureGates {
			c.FeatureGates[k] = v
		}
	}
	c.ClientConnection.Kubeconfig = o.kubeconfig
	c.ClientConnection.ContentType = o.apiContent
	c.ClientConnection.AcceptContentTypes = o.apiAccept
	c.ClientConnection.QPS = o.apiQPS
	c.ClientConnection.Burst = int32(o.apiBurst)
	c.HostnameOverride = o.hostname
	c.BindAddress = o.kp.bindAddress
	c.HealthzBindAddress = o.healthzAddr
	c.MetricsBindAddress = o.metricsAddr
	c.BindAddressHardFail = o.kp.bindHardFail
	c.EnableProfiling = o.profiling
	c.ShowHiddenMetricsForVersion = o.kp.showHidden
	// What runs, whatever mode was asked for (see --proxy-mode).
	c.Mode = "iptables"
	c.IPTables.MasqueradeAll = o.masqueradeAll
	c.IPTables.MasqueradeBit = ptr.To(int32(o.masqBit))
	c.IPTables.LocalhostNodePorts = ptr.To(o.localhostNP)
	c.IPTables.SyncPeriod = metav1.Duration{Duration: o.syncPeriod}
	c.IPTables.MinSyncPeriod = metav1.Duration{Duration: o.minSyncPeriod}
	c.Conntrack.MaxPerCore = ptr.To(int32(o.conntrack.MaxPerCore))
	c.Conntrack.Min = ptr.To(int32(o.conntrack.Min))
	c.Conntrack.TCPEstablishedTimeout = &metav1.Duration{Duration: o.conntrack.TCPEstablished}
	c.Conntrack.TCPCloseWaitTimeout = &metav1.Duration{Duration: o.conntrack.TCPCloseWait}
	c.Conntrack.TCPBeLiberal = o.beLiberal
	c.Conntrack.UDPTimeout = metav1.Duration{Duration: o.conntrack.UDPTimeout}
	c.Conntrack.UDPStreamTimeout = metav1.Duration{Duration: o.conntrack.UDPStreamTimeout}
	c.OOMScoreAdj = ptr.To(o.kp.oomScoreAdj)
	c.ConfigSyncPeriod = metav1.Duration{Duration: o.kp.configSync}
	c.NodePortAddresses = append([]string(nil), o.nodePortAddrs...)
	c.DetectLocalMode = kpconfig.LocalMode(o.detectLocal)
	c.DetectLocal.BridgeInterface = o.bridgeIf
	c.DetectLocal.InterfaceNamePrefix = o.ifPrefix
	c.ClusterCIDR = o.clusterCIDR
	c.Logging.Format = o.kp.loggingFormat
	c.Logging.FlushFrequency.Duration = metav1.Duration{Duration: o.kp.logFlush}
	c.Logging.FlushFrequency.SerializeAsString = true
	c.Logging.Verbosity = logsapi.VerbosityLevel(klogVerbosity())
	if o.detectLocal == "" {
		c.DetectLocalMode = proxier.DetectClusterCIDR
	}
	return c
}

// klogVerbosity is -v as klog holds it.
func klogVerbosity() int {
	for v := 10; v >= 0; v-- {
		if klog.V(klog.Level(v)).Enabled() {
			return v
		}
	}
	return 0
}

// writeConfig is --write-config-to: the effective configuration as YAML,
// then exit.
func (o *daemonOptions) writeConfig(path string, logger klog.Logger) error {
	c := o.effectiveConfig()
	js, err := json.Marshal(c)
	if err != nil {
		return err
	}
	out, err := yaml.JSONToYAML(js)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		return fmt.Errorf("--write-config-to: %w", err)
	}
	logger.Info("Wrote configuration", "file", path)
	return nil
}
