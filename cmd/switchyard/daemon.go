package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	kpconfig "k8s.io/kube-proxy/config/v1alpha1"

	"github.com/switchyard-proxy/switchyard/pkg/conntrack"
	"github.com/switchyard-proxy/switchyard/pkg/features"
	"github.com/switchyard-proxy/switchyard/pkg/healthcheck"
	hostpkg "github.com/switchyard-proxy/switchyard/pkg/host"
	"github.com/switchyard-proxy/switchyard/pkg/iptables"
	"github.com/switchyard-proxy/switchyard/pkg/metrics"
	"github.com/switchyard-proxy/switchyard/pkg/nfacct"
	"github.com/switchyard-proxy/switchyard/pkg/proxier"
	"github.com/switchyard-proxy/switchyard/pkg/server"
	"github.com/switchyard-proxy/switchyard/pkg/watch"
)

type daemonOptions struct {
	ruleOptions
	kubeconfig    string
	master        string
	syncPeriod    time.Duration
	minSyncPeriod time.Duration
	cpuShare      float64
	backend       string
	maxRestore    int
	profiling     bool
	dryRun        bool
	conntrack     hostpkg.ConntrackConfig
	healthzAddr   string
	metricsAddr   string
	apiQPS        float32
	apiBurst      int
	apiContent    string
	apiAccept     string
	configFile    string
	kp            kubeProxyOptions
	// fileConfig is the decoded --config file, for /configz and
	// --write-config-to; nil without one.
	fileConfig *kpconfig.KubeProxyConfiguration
}

func newDaemonOptions() *daemonOptions {
	return &daemonOptions{syncPeriod: 30 * time.Second, minSyncPeriod: 100 * time.Millisecond, cpuShare: 0.25, backend: "auto", maxRestore: -1,
		healthzAddr: "0.0.0.0:10256", metricsAddr: "127.0.0.1:10249", apiQPS: 5, apiBurst: 10, apiContent: "application/vnd.kubernetes.protobuf",
		conntrack: hostpkg.ConntrackConfig{MaxPerCore: 32768, Min: 131072, TCPEstablished: 24 * time.Hour, TCPCloseWait: time.Hour}}
}

func (o *daemonOptions) AddFlags(fs *pflag.FlagSet) {
	o.ruleOptions.AddFlags(fs)
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "Path to a kubeconfig file (default: in-cluster configuration)")
	fs.StringVar(&o.master, "master", "", "The address of the Kubernetes API server (overrides the kubeconfig)")
	fs.DurationVar(&o.syncPeriod, "iptables-sync-period", o.syncPeriod, "The longest time between checks that the rules are intact and retries of a failed sync")
	fs.DurationVar(&o.minSyncPeriod, "iptables-min-sync-period", o.minSyncPeriod, "The least time between two syncs; changes inside it are applied together")
	fs.Float64Var(&o.cpuShare, "sync-cpu-share", o.cpuShare, "The share of one core the sync loops and their iptables processes may use on average under sustained churn: "+
		"syncs are spaced out (changes applied together) to keep to it, while a quiet node syncs at once (0: no limit)")
	fs.StringVar(&o.backend, "iptables-backend", o.backend, "iptables backend: auto (whichever the host uses), legacy or nft")
	fs.IntVar(&o.maxRestore, "iptables-max-restore-rules", o.maxRestore, "The most rules one iptables-restore writes or deletes; bigger changes are applied in consistent steps (-1: by backend, "+
		fmt.Sprintf("%d on nf_tables, unbounded on legacy; 0: unbounded)", proxier.DefaultMaxRestoreRulesNFT))
	fs.BoolVar(&o.profiling, "profiling", false, "Serve Go profiles at /debug/pprof/ on the metrics address")
	fs.BoolVar(&o.dryRun, "dry-run", false, "Log each iptables-restore batch instead of applying it (needs no root)")
	fs.StringVar(&o.configFile, "config", "", "kube-proxy's KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1), as found in the kube-proxy ConfigMap; flags override it")
	fs.StringVar(&o.healthzAddr, "healthz-bind-address", o.healthzAddr, "Where /healthz and /livez listen (kube-proxy's port; empty disables)")
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", o.metricsAddr, "Where /metrics and /debug listen (empty disables)")
	fs.Float32Var(&o.apiQPS, "kube-api-qps", o.apiQPS, "QPS to use while talking with the API server")
	fs.IntVar(&o.apiBurst, "kube-api-burst", o.apiBurst, "Burst to use while talking with the API server")
	fs.StringVar(&o.apiContent, "kube-api-content-type", o.apiContent, "Content type of requests sent to the API server")
	fs.StringVar(&o.apiAccept, "kube-api-accept-content-types", "", "Accept header of requests to the API server (the config file's clientConnection.acceptContentTypes)")
	_ = fs.MarkHidden("kube-api-accept-content-types")
	o.kp.AddFlags(fs)
	fs.IntVar(&o.conntrack.MaxPerCore, "conntrack-max-per-core", o.conntrack.MaxPerCore, "nf_conntrack_max per CPU core (0 leaves nf_conntrack_max alone)")
	fs.IntVar(&o.conntrack.Min, "conntrack-min", o.conntrack.Min, "The least nf_conntrack_max, whatever the cores")
	fs.DurationVar(&o.conntrack.TCPEstablished, "conntrack-tcp-timeout-established", o.conntrack.TCPEstablished, "Idle timeout of established TCP connections (0 leaves it alone)")
	fs.DurationVar(&o.conntrack.TCPCloseWait, "conntrack-tcp-timeout-close-wait", o.conntrack.TCPCloseWait, "Timeout of TCP connections in CLOSE_WAIT (0 leaves it alone)")
	fs.DurationVar(&o.conntrack.UDPTimeout, "conntrack-udp-timeout", 0, "Idle timeout of UDP flows (0 leaves it alone)")
	fs.DurationVar(&o.conntrack.UDPStreamTimeout, "conntrack-udp-timeout-stream", 0, "Idle timeout of UDP streams (0 leaves it alone)")
}

func (o *daemonOptions) Validate() error {
	if err := o.ruleOptions.Validate(); err != nil {
		return err
	}
	if o.syncPeriod <= 0 {
		return usagef("--iptables-sync-period must be positive")
	}
	if o.minSyncPeriod < 0 || o.minSyncPeriod > o.syncPeriod {
		return usagef("--iptables-min-sync-period must be between 0 and --iptables-sync-period")
	}
	if o.cpuShare < 0 {
		return usagef("--sync-cpu-share must not be negative")
	}
	switch iptables.Backend(o.backend) {
	case iptables.BackendAuto, iptables.BackendLegacy, iptables.BackendNFT:
	default:
		return usagef("--iptables-backend: %q is not auto, legacy or nft", o.backend)
	}
	return nil
}

func (o *daemonOptions) restConfig() (*rest.Config, error) {
	if o.kubeconfig == "" && o.master == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, usagef("no --kubeconfig or --master given and not running in a cluster: %v", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags(o.master, o.kubeconfig)
	if err != nil {
		return nil, usagef("--kubeconfig %s: %v", o.kubeconfig, err)
	}
	return cfg, nil
}

// ensureNFAcct creates kube-proxy's two nfacct counters and publishes
// them; a counter the kernel will not create is logged and left out of the
// rules (a rule naming a missing counter is refused), as kube-proxy does.
// It returns the names of the counters in use.
func (o *daemonOptions) ensureNFAcct(logger klog.Logger, beLiberal bool) (invalid, localhost string) {
	if o.dryRun {
		return "", ""
	}
	acct := nfacct.Netlink{}
	ensure := func(name string) string {
		if err := acct.Ensure(name); err != nil {
			logger.Error(err, "Failed to create nfacct counter; the corresponding metric will not be updated", "counter", name)
			return ""
		}
		return name
	}
	if !beLiberal { // no INVALID-drop rule, nothing to count
		invalid = ensure(proxier.NFAcctInvalidDropped)
	}
	if o.ruleOptions.renderConfig(v1.IPv4Protocol).LocalhostNodePortsActive() {
		localhost = ensure(proxier.NFAcctLocalhostNodePorts)
	}
	if invalid != "" || localhost != "" {
		metrics.RegisterOnce(metrics.NFAcctCollector{Read: acct.Packets, InvalidDropped: invalid, LocalhostNodePorts: localhost})
	}
	return invalid, localhost
}

// renderConfig is the rule options' config with --bind-address's primary
// IP override.
func (o *daemonOptions) renderConfig(family v1.IPFamily) proxier.RenderConfig {
	c := o.ruleOptions.renderConfig(family)
	c.PrimaryIPOverride = o.kp.primaryOverride
	return c
}

// warner records a Warning event (watch.EventReporter; noWarner where there
// is no API client, as with --init-only).
type warner interface {
	Warn(obj any, reason, message string)
}

type noWarner struct{}

func (noWarner) Warn(any, string, string) {}

// daemonState is what the HTTP endpoints read.
type daemonState struct {
	*proxier.Proxier
	tracker *watch.Tracker
}

// NodeEligible is kube-proxy's answer: the Node is known, not being
// deleted and not tainted for deletion (watch folds the taint into
// Deleting). A deleted Node is not eligible either (kube-proxy keeps
// answering for the last Node it saw).
func (d daemonState) NodeEligible() bool {
	n := d.tracker.Node()
	return n.Known && !n.Deleting
}

// hostFor returns the iptables host layer for one family, or an error when
// the node cannot proxy that family (no ip6tables, a kernel without IPv6).
func (o *daemonOptions) hostFor(ctx context.Context, logger klog.Logger, family v1.IPFamily) (iptables.Interface, error) {
	fam := toFamily(family)
	if family == v1.IPv6Protocol {
		if _, err := os.Stat("/proc/net/if_inet6"); err != nil {
			return nil, fmt.Errorf("the kernel has no IPv6: %w", err)
		}
	}
	if o.dryRun {
		return &iptables.DryRun{Logger: logger, Family: fam}, nil
	}
	runner, err := iptables.NewRunner(ctx, fam, iptables.Backend(o.backend))
	if err != nil {
		return nil, err
	}
	if err := runner.Probe(); err != nil {
		return nil, fmt.Errorf("%s cannot read the nat table: %w", fam, err)
	}
	logger.Info("Using iptables", "backend", runner.Backend(), "family", runner.Family(), "why", runner.BackendReason())
	return runner, nil
}

// ensureRouteLocalnet lets NodePorts answer on 127.0.0.1. A kernel that
// refuses (a read-only /proc/sys, as in an unprivileged container) is a
// warning: everything else still works.
func (o *daemonOptions) ensureRouteLocalnet(logger klog.Logger, reporter warner, nodeRef *v1.ObjectReference) {
	if o.dryRun {
		logger.Info("Dry run: would set sysctl", "name", hostpkg.RouteLocalnet, "value", "1")
		return
	}
	changed, err := hostpkg.Ensure(hostpkg.ProcSysctl{}, hostpkg.RouteLocalnet, "1")
	if err != nil {
		logger.Error(err, "NodePorts will not answer on 127.0.0.1; to silence this, pass --iptables-localhost-nodeports=false or --nodeport-addresses without loopback")
		reporter.Warn(nodeRef, "RouteLocalnetUnavailable", err.Error())
		return
	}
	if changed {
		logger.Info("Set route_localnet=1 so NodePorts answer on 127.0.0.1; to avoid it pass --iptables-localhost-nodeports=false or --nodeport-addresses without loopback")
	}
}

// applyConntrack writes the conntrack settings; any it cannot write (inside
// a network namespace nf_conntrack_max is read-only) is a warning.
func (o *daemonOptions) applyConntrack(logger klog.Logger, reporter warner, nodeRef *v1.ObjectReference) {
	o.conntrack.TCPBeLiberal = o.beLiberal
	if o.dryRun {
		logger.Info("Dry run: would apply conntrack settings", "settings", o.conntrack)
		return
	}
	params := hostpkg.ProcSysctl{Root: "/sys/module/nf_conntrack/parameters"}
	if err := hostpkg.ApplyConntrack(hostpkg.ProcSysctl{}, params, o.conntrack, runtime.NumCPU()); err != nil {
		logger.Error(err, "Some conntrack settings could not be written; the kernel's values stay")
		reporter.Warn(nodeRef, "ConntrackSettingsUnavailable", err.Error())
	}
}

// healthCheckAddrs are the addresses the health check servers listen on:
// all (nil), or those --nodeport-addresses allows: the node's primary IPs
// for "primary" (from the Node, or --bind-address), the local addresses in
// the CIDRs otherwise.
func (o *daemonOptions) healthCheckAddrs(logger klog.Logger, node proxier.NodeInfo) []string {
	if len(o.nodePortCIDRs) == 0 && !o.nodePortPrimary {
		return nil
	}
	out := []string{} // not nil: nil would mean every address
	if o.nodePortPrimary {
		for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
			if ip, ok := o.renderConfig(fam).PrimaryIP(node); ok {
				out = append(out, ip.String())
			}
		}
		return out
	}
	addrs, err := hostpkg.InterfaceAddrs()
	if err != nil {
		logger.Error(err, "Cannot list the node's addresses; health check servers listen on all of them")
		return nil
	}
	for _, a := range addrs {
		for _, p := range o.nodePortCIDRs {
			if p.Contains(a) {
				out = append(out, a.String())
				break
			}
		}
	}
	return out
}

// apiClient is the API client the daemon's flags and kubeconfig describe.
func (o *daemonOptions) apiClient() (kubernetes.Interface, error) {
	cfg, err := o.restConfig()
	if err != nil {
		return nil, err
	}
	cfg.UserAgent = "switchyard/" + version
	cfg.QPS, cfg.Burst, cfg.ContentType = o.apiQPS, o.apiBurst, o.apiContent
	if o.apiAccept != "" {
		cfg.AcceptContentTypes = o.apiAccept
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating API client: %w", err)
	}
	return client, nil
}

// syncers makes one Syncer per IP family whose iptables works here, after
// the node-wide preparations their rules depend on (nfacct counters,
// route_localnet, the be_liberal sysctl).
func (o *daemonOptions) syncers(ctx context.Context, logger klog.Logger, reporter *watch.EventReporter, nodeRef *v1.ObjectReference) ([]*proxier.Syncer, error) {
	beLiberal := false
	if v, err := (hostpkg.ProcSysctl{}).Get(hostpkg.ConntrackTCPBeLiberal); err == nil && v != "0" {
		logger.Info("nf_conntrack_tcp_be_liberal is set: not installing the rule that drops INVALID packets")
		beLiberal = true
	}
	invalidCounter, localhostCounter := o.ensureNFAcct(logger, o.beLiberal || beLiberal)
	var syncers []*proxier.Syncer
	for _, family := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		host, err := o.hostFor(ctx, logger, family)
		if err != nil {
			logger.Error(err, "This IP family is not proxied on this node", "family", family)
			continue
		}
		cfg := o.renderConfig(family)
		cfg.ConntrackTCPBeLiberal = cfg.ConntrackTCPBeLiberal || beLiberal
		cfg.NFAcctInvalid, cfg.NFAcctLocalhost = invalidCounter != "", localhostCounter != ""
		if cfg.LocalhostNodePortsActive() {
			o.ensureRouteLocalnet(logger, reporter, nodeRef)
		}
		s := proxier.NewSyncer(cfg, host)
		s.MaxRestoreRules = o.maxRestore
		if r, ok := host.(*iptables.Runner); ok && o.maxRestore < 0 {
			s.MaxRestoreRules = proxier.MaxRestoreRulesFor(r.Backend())
		}
		if s.MaxRestoreRules < 0 {
			s.MaxRestoreRules = 0
		}
		if !o.dryRun {
			s.Conntrack = conntrack.Netlink{}
		}
		syncers = append(syncers, s)
	}
	if len(syncers) == 0 {
		return nil, fmt.Errorf("neither IPv4 nor IPv6 iptables works on this node")
	}
	return syncers, nil
}

// serveEndpoints starts the healthz and metrics servers (retrying their
// binds unless --bind-address-hard-fail).
func (o *daemonOptions) serveEndpoints(ctx context.Context, logger klog.Logger, state daemonState) error {
	configz, err := json.Marshal(map[string]any{"kubeproxy.config.k8s.io": o.effectiveConfig()})
	if err != nil {
		return err
	}
	serve := server.Serve
	if !o.kp.bindHardFail {
		serve = server.ServeRetrying
	}
	if err := serve(ctx, logger, "healthz", o.healthzAddr, server.HealthHandler(state)); err != nil {
		return err
	}
	if err := serve(ctx, logger, "metrics", o.metricsAddr, server.MetricsHandler(state, server.MetricsOptions{Profiling: o.profiling, Configz: configz})); err != nil {
		return err
	}
	return nil
}

// watchAndSync starts the informers and, once their caches have synced,
// runs the sync loops until ctx ends; the rules stay in place after.
func (o *daemonOptions) watchAndSync(ctx context.Context, logger klog.Logger, client kubernetes.Interface, tracker *watch.Tracker, p *proxier.Proxier) error {
	w := watch.NewWatcher(client, tracker, o.kp.configSync)
	logger.Info("Starting switchyard", "version", version, "node", o.hostname, "clusterCIDR", o.clusterCIDR,
		"masqueradeAll", o.masqueradeAll, "serviceProxyName", o.proxyName, "dryRun", o.dryRun)
	if err := w.Start(ctx); err != nil {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
			return cause
		}
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	logger.Info("Informer caches synced; starting the sync loop")
	p.Run(ctx)
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		logger.Info("Exiting; rules stay in place", "reason", cause.Error())
		return cause
	}
	logger.Info("Shutting down; rules stay in place")
	return nil
}

// reportQuarantined raises an Event for each Service port whose rules the
// kernel refused.
func reportQuarantined(reporter *watch.EventReporter, syncers []*proxier.Syncer) {
	for _, s := range syncers {
		for name, reason := range s.Quarantined() {
			reporter.Warn(&v1.ObjectReference{Kind: "Service", Namespace: name.Namespace, Name: name.Name},
				"RulesRefused", fmt.Sprintf("%s rules for port %s were refused by the kernel and are left out until the Service changes: %s",
					s.Config.Family, name.String(), reason))
		}
	}
}

func (o *daemonOptions) Run(ctx context.Context) error {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := klog.Background().WithName("switchyard")
	ctx = klog.NewContext(ctx, logger)

	client, err := o.apiClient()
	if err != nil {
		return err
	}

	if o.configFile != "" {
		// As kube-proxy: a changed file ends the process, so that the
		// DaemonSet restarts it with the new configuration.
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		if err := watchConfigFile(ctx, logger, o.configFile, cancel); err != nil {
			return err
		}
	}
	o.applyOOMScoreAdj(logger)
	reporter := watch.NewEventReporter(ctx, client, o.hostname)
	nodeRef := &v1.ObjectReference{Kind: "Node", Name: o.hostname, UID: types.UID(o.hostname)}
	o.applyConntrack(logger, reporter, nodeRef)
	if !o.dryRun {
		removeNFTablesLeftovers(ctx, logger)
	}
	metrics.SetBuildInfo(version, "")
	syncers, err := o.syncers(ctx, logger, reporter, nodeRef)
	if err != nil {
		return err
	}

	filter := o.filter()
	filter.DropExternalIPs = !o.kp.effectiveGates.Enabled(features.AllowServiceExternalIPs)
	tracker := watch.NewTracker(logger, filter, o.hostname, reporter)
	// The health check servers answer with the proxier's health, and the
	// proxier hands them every synced snapshot.
	var p *proxier.Proxier
	hc := healthcheck.NewServices(logger.WithName("healthcheck"), func() []string { return o.healthCheckAddrs(logger, tracker.Node()) },
		func() bool { return p.Healthy() },
		func(service string, port int32, err error) {
			ns, name, _ := strings.Cut(service, "/")
			reporter.Warn(&v1.ObjectReference{Kind: "Service", Namespace: ns, Name: name},
				"HealthCheckNodePortUnavailable", fmt.Sprintf("health check node port %d cannot be opened on node %s: %v", port, o.hostname, err))
		})
	defer hc.Close()
	p = proxier.New(proxier.LoopConfig{MinSyncPeriod: o.minSyncPeriod, CPUShare: o.cpuShare, SyncPeriod: o.syncPeriod, FullSyncPeriod: time.Hour,
		HostAddrs: func() []netip.Addr {
			addrs, err := hostpkg.InterfaceAddrs()
			if err != nil {
				logger.Error(err, "Cannot list the node's addresses; NodePorts limited by --nodeport-addresses may not answer")
			}
			return addrs
		},
		OnSynced: func(snap *proxier.Snapshot) {
			hc.Sync(proxier.HealthCheckPorts(snap))
			reportQuarantined(reporter, syncers)
		},
	}, tracker, syncers...)

	if msg := hostpkg.BridgeNetfilterProblem(hostpkg.ProcSysctl{}); msg != "" {
		logger.Info("Warning: " + msg)
		reporter.Warn(nodeRef, "BridgeNetfilterDisabled", msg)
	}
	if err := o.serveEndpoints(ctx, logger, daemonState{Proxier: p, tracker: tracker}); err != nil {
		return err
	}

	return o.watchAndSync(ctx, logger, client, tracker, p)
}
