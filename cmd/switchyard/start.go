package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"time"

	"github.com/spf13/cobra"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	hostpkg "github.com/switchyard-proxy/switchyard/pkg/host"
	"github.com/switchyard-proxy/switchyard/pkg/iptables"
)

// start is the root command: kube-proxy's order of things. The config file
// (if any) is applied with kube-proxy's precedence, the values checked,
// then one of kube-proxy's one-shot actions (--write-config-to, --cleanup,
// --init-only) runs and exits, or the daemon runs.
func (o *daemonOptions) start(cmd *cobra.Command) error {
	fs := cmd.Flags()
	var warnings []string
	if o.configFile != "" {
		c, w, err := loadConfigFile(o.configFile, fs)
		if err != nil {
			return err
		}
		o.fileConfig = c
		warnings = append(warnings, w...)
	} else if o.kp.writeConfigTo == "" {
		// The deprecated port flags count only without a config file.
		o.healthzAddr = withPort(o.healthzAddr, o.kp.healthzPort)
		o.metricsAddr = withPort(o.metricsAddr, o.kp.metricsPort)
	}
	kw, err := o.kp.Complete(fs)
	if err != nil {
		return err
	}
	warnings = append(warnings, kw...)
	setUpLogging(o.kp.loggingFormat, o.kp.logFlush, cmd.ErrOrStderr())
	logger := klog.Background()
	for _, w := range warnings {
		logger.Info("Warning: " + w)
	}
	if err := o.Complete(); err != nil {
		return err
	}
	if err := o.Validate(); err != nil {
		return err
	}
	switch {
	case o.kp.writeConfigTo != "":
		return o.writeConfig(o.kp.writeConfigTo, logger)
	case o.kp.cleanup:
		return cleanupAll(cmdContext(cmd), cmd.OutOrStdout())
	case o.kp.initOnly:
		return o.initOnly(logger)
	}
	return o.Run(cmd.Context())
}

// setUpLogging applies --logging-format and --log-flush-frequency.
func setUpLogging(format string, flush time.Duration, w io.Writer) {
	if format == "json" {
		klog.SetLogger(newJSONLogger(w))
	}
	klog.StartFlushDaemon(flush)
}

// applyOOMScoreAdj sets our own oom_score_adj, as kube-proxy does; where
// the kernel refuses (a negative value needs CAP_SYS_RESOURCE) it is
// logged and the daemon goes on.
func (o *daemonOptions) applyOOMScoreAdj(logger klog.Logger) {
	if o.dryRun {
		return
	}
	if err := hostpkg.SetOOMScoreAdj(int(o.kp.oomScoreAdj)); err != nil {
		logger.Info("Failed to apply OOMScore; going on without it", "oomScoreAdj", o.kp.oomScoreAdj, "err", err)
		return
	}
	logger.V(2).Info("Set oom_score_adj", "value", o.kp.oomScoreAdj)
}

// initOnly is --init-only: what needs full root (the conntrack and
// route_localnet sysctls) is done, then switchyard exits 0 so an init
// container can run it and the daemon needs only CAP_NET_ADMIN.
func (o *daemonOptions) initOnly(logger klog.Logger) error {
	o.applyConntrack(logger, noWarner{}, nil)
	if o.renderConfig(v1.IPv4Protocol).LocalhostNodePortsActive() {
		o.ensureRouteLocalnet(logger, noWarner{}, nil)
	}
	logger.Info("System initialized and --init-only specified; exiting")
	return nil
}

// cleanupAll is --cleanup: switchyard's rules and an upstream kube-proxy's
// (iptables mode in both backends and families, nftables mode) go, then
// switchyard exits; 0 when everything present was removed.
func cleanupAll(ctx context.Context, out io.Writer) error {
	err, nftErr := removeRules(ctx, out, true, true)
	if nftErr != nil && !errors.Is(nftErr, iptables.ErrNoNFT) {
		err = errors.Join(err, nftErr)
	}
	return err
}

// removeNFTablesLeftovers deletes an nftables-mode kube-proxy's tables at
// start, as kube-proxy in iptables mode does, so a node moved from an
// nftables-mode kube-proxy keeps no stale rules.
func removeNFTablesLeftovers(ctx context.Context, logger klog.Logger) {
	tables, err := iptables.CleanupKubeProxyNFTables(ctx)
	for _, t := range tables {
		logger.Info("Removed an nftables-mode kube-proxy's table", "table", t)
	}
	switch {
	case errors.Is(err, iptables.ErrNoNFT):
		logger.V(2).Info("nft is not installed: not looking for nftables-mode kube-proxy tables")
	case err != nil:
		logger.Error(err, "Could not remove an nftables-mode kube-proxy's tables")
	}
}

// printVersion is --version (and --version=raw).
func printVersion(w io.Writer, raw bool) {
	if raw {
		fmt.Fprintf(w, "switchyard %s (%s, %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return
	}
	fmt.Fprintln(w, "switchyard", version)
}
