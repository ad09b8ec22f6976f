// Package metrics defines switchyard's Prometheus metrics: kube-proxy's
// names, labels and buckets (v1.36) for the same things, so existing
// dashboards and alerts keep working, plus switchyard_* for what only
// switchyard has. It registers them on its own registry; pkg/server serves
// it. Recording is cheap and never fails.
package metrics

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

const kp = "kubeproxy"

var syncBuckets = prometheus.ExponentialBuckets(0.001, 2, 15)

func programmingBuckets() []float64 {
	var b []float64
	b = append(b, prometheus.LinearBuckets(0.25, 0.25, 2)...) // 0.25s, 0.5s
	b = append(b, prometheus.LinearBuckets(1, 1, 59)...)      // 1s .. 59s
	b = append(b, prometheus.LinearBuckets(60, 5, 12)...)     // 60s .. 115s
	b = append(b, prometheus.LinearBuckets(120, 30, 7)...)    // 2min .. 5min
	return b
}

var (
	// Registry holds every metric below (and the Go and process collectors).
	Registry = prometheus.NewRegistry()

	SyncDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: kp, Name: "sync_proxy_rules_duration_seconds",
		Help: "SyncProxyRules latency in seconds", Buckets: syncBuckets}, []string{"ip_family"})
	SyncFullDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: kp, Name: "sync_full_proxy_rules_duration_seconds",
		Help: "SyncProxyRules latency in seconds for full resyncs", Buckets: syncBuckets}, []string{"ip_family"})
	SyncPartialDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: kp, Name: "sync_partial_proxy_rules_duration_seconds",
		Help: "SyncProxyRules latency in seconds for partial resyncs", Buckets: syncBuckets}, []string{"ip_family"})
	SyncLastTimestamp = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: kp, Name: "sync_proxy_rules_last_timestamp_seconds",
		Help: "The last time proxy rules were successfully synced"}, []string{"ip_family"})
	SyncLastQueuedTimestamp = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: kp, Name: "sync_proxy_rules_last_queued_timestamp_seconds",
		Help: "The last time a sync of proxy rules was queued"}, []string{"ip_family"})
	NetworkProgrammingDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: kp, Name: "network_programming_duration_seconds",
		Help: "In Cluster Network Programming Latency in seconds", Buckets: programmingBuckets()}, []string{"ip_family"})

	EndpointChangesPending = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: kp, Name: "sync_proxy_rules_endpoint_changes_pending",
		Help: "Pending proxy rules Endpoint changes"})
	EndpointChangesTotal = prometheus.NewCounter(prometheus.CounterOpts{Namespace: kp, Name: "sync_proxy_rules_endpoint_changes_total",
		Help: "Cumulative proxy rules Endpoint changes"})
	ServiceChangesPending = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: kp, Name: "sync_proxy_rules_service_changes_pending",
		Help: "Pending proxy rules Service changes"})
	ServiceChangesTotal = prometheus.NewCounter(prometheus.CounterOpts{Namespace: kp, Name: "sync_proxy_rules_service_changes_total",
		Help: "Cumulative proxy rules Service changes"})

	RestoreFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: kp, Name: "sync_proxy_rules_iptables_restore_failures_total",
		Help: "Cumulative proxy iptables restore failures"}, []string{"ip_family"})
	PartialRestoreFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: kp, Name: "sync_proxy_rules_iptables_partial_restore_failures_total",
		Help: "Cumulative proxy iptables partial restore failures"}, []string{"ip_family"})
	RulesTotal = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: kp, Name: "sync_proxy_rules_iptables_total",
		Help: "Total number of iptables rules owned by kube-proxy"}, []string{"table", "ip_family"})
	RulesLast = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: kp, Name: "sync_proxy_rules_iptables_last",
		Help: "Number of iptables rules written by kube-proxy in last sync"}, []string{"table", "ip_family"})
	NoLocalEndpoints = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: kp, Name: "sync_proxy_rules_no_local_endpoints_total",
		Help: "Number of services with a Local traffic policy and no endpoints"}, []string{"traffic_policy", "ip_family"})
	HealthzTotal = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: kp, Name: "proxy_healthz_total",
		Help: "Cumulative proxy healthz HTTP status"}, []string{"code"})
	LivezTotal = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: kp, Name: "proxy_livez_total",
		Help: "Cumulative proxy livez HTTP status"}, []string{"code"})
	ConntrackReconcileDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: kp, Name: "conntrack_reconciler_sync_duration_seconds",
		Help: "ReconcileConntrackFlowsLatency latency in seconds", Buckets: syncBuckets}, []string{"ip_family"})
	ConntrackDeleted = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: kp, Name: "conntrack_reconciler_deleted_entries_total",
		Help: "Cumulative conntrack flows deleted by conntrack reconciler"}, []string{"ip_family"})

	// switchyard's own.
	RestoreBytes = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "switchyard", Name: "sync_restore_bytes",
		Help: "Size of each iptables-restore batch", Buckets: prometheus.ExponentialBuckets(256, 4, 12)}, []string{"ip_family"})
	RestoreDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "switchyard", Name: "restore_duration_seconds",
		Help: "Time of each iptables-restore run (a bounded sync runs several)", Buckets: prometheus.ExponentialBuckets(0.002, 2, 16)}, []string{"ip_family"})
	Syncs = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "switchyard", Name: "syncs_total",
		Help: "Syncs by kind: full, partial (wrote something) or noop (nothing changed)"}, []string{"kind", "ip_family"})
	ChainsWritten = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "switchyard", Name: "chains_written_total",
		Help: "Chains rewritten by syncs"}, []string{"ip_family"})
	ChainsDeleted = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "switchyard", Name: "chains_deleted_total",
		Help: "Chains deleted by syncs"}, []string{"ip_family"})
	RulesByLevel = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "switchyard", Name: "rules",
		Help: "Rules switchyard owns, by table and chain level (top: SWY-SERVICES and the other fixed chains; service: SVC/SVL/EXT/FW; endpoint: SEP)"},
		[]string{"table", "level", "ip_family"})
	QuarantinedServices = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "switchyard", Name: "quarantined_service_ports",
		Help: "Service ports left out of the rules because the kernel refused them"})
	PendingServicePorts = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "switchyard", Name: "pending_service_ports",
		Help: "Changed Service ports the last sync left for the next one, to keep each restore bounded"}, []string{"ip_family"})
	SyncPhaseDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "switchyard", Name: "sync_phase_duration_seconds",
		Help:    "Where each sync's time went, by phase: queue (the oldest change waiting for the sync), render, host_state (reading the tables, full syncs), diff (writing the restore text), restore, jumps, conntrack",
		Buckets: syncBuckets}, []string{"ip_family", "phase"})
	IntegrityChecks = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "switchyard", Name: "integrity_checks_total",
		Help: "Checks that the programmed rules are still on the host, by result: intact, broken (a full sync follows) or busy (another program held the xtables lock; nothing seen)"},
		[]string{"ip_family", "result"})
	SyncCPUThrottled = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "switchyard", Name: "sync_cpu_throttled_seconds_total",
		Help: "Time syncs waited for the CPU budget (--sync-cpu-share) under sustained churn; the changes of that time were applied together"},
		[]string{"ip_family"})
	SyncCPUBudget = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "switchyard", Name: "sync_cpu_budget_seconds",
		Help: "CPU-seconds left in the sync loops' budget (negative: owed; 0 without --sync-cpu-share)"}, func() float64 {
		if f := cpuBudgetFunc.Load(); f != nil {
			return (*f)()
		}
		return 0
	})
)

var cpuBudgetFunc atomic.Pointer[func() float64]

// SetCPUBudgetFunc sets what switchyard_sync_cpu_budget_seconds reports.
func SetCPUBudgetFunc(f func() float64) { cpuBudgetFunc.Store(&f) }

func init() {
	Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		SyncDuration, SyncFullDuration, SyncPartialDuration, SyncLastTimestamp, SyncLastQueuedTimestamp, NetworkProgrammingDuration,
		EndpointChangesPending, EndpointChangesTotal, ServiceChangesPending, ServiceChangesTotal,
		RestoreFailures, PartialRestoreFailures, RulesTotal, RulesLast, NoLocalEndpoints, HealthzTotal, LivezTotal,
		ConntrackReconcileDuration, ConntrackDeleted,
		RestoreBytes, Syncs, ChainsWritten, ChainsDeleted, RulesByLevel, QuarantinedServices,
		PendingServicePorts, RestoreDuration, IntegrityChecks, SyncPhaseDuration, SyncCPUThrottled, SyncCPUBudget)
}
