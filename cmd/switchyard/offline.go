package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/spf13/cobra"
	v1 "k8s.io/api/core/v1"

	hostpkg "github.com/switchyard-proxy/switchyard/pkg/host"
	"github.com/switchyard-proxy/switchyard/pkg/iptables"
	"github.com/switchyard-proxy/switchyard/pkg/manifest"
	"github.com/switchyard-proxy/switchyard/pkg/proxier"
)

// fileOptions is how render and explain get their input.
type fileOptions struct {
	ruleOptions
	files    []string
	ipFamily string
	family   v1.IPFamily
}

func (o *fileOptions) addFlags(cmd *cobra.Command) {
	o.ruleOptions.AddFlags(cmd.Flags())
	cmd.Flags().StringArrayVarP(&o.files, "filename", "f", nil, "YAML or JSON file of Services, EndpointSlices and Nodes (repeatable; - reads stdin)")
	cmd.Flags().StringVar(&o.ipFamily, "ip-family", "ipv4", "The IP family to render: ipv4 or ipv6")
}

func (o *fileOptions) complete() error {
	if err := o.ruleOptions.Complete(); err != nil {
		return err
	}
	if err := o.ruleOptions.Validate(); err != nil {
		return err
	}
	fam, err := parseFamily(o.ipFamily)
	o.family = fam
	return err
}

// load reads the files and builds the snapshot. Any problem with an object
// is an error naming the file, object and field.
func (o *fileOptions) load(cmd *cobra.Command) (*proxier.Snapshot, error) {
	objs, err := manifest.Load(o.files, cmd.InOrStdin())
	if err != nil {
		return nil, usageError{err}
	}
	snap, warnings := proxier.SnapshotFromObjects(o.filter(), o.hostname, objs.Services, objs.Slices, objs.Nodes)
	if len(warnings) > 0 {
		return nil, usageError{fmt.Errorf("%s: %w", strings.Join(o.files, ","), errors.Join(warnings...))}
	}
	return snap, nil
}

func newRenderCommand() *cobra.Command {
	o := &fileOptions{}
	cmd := &cobra.Command{
		Use:   "render -f FILE [-f FILE...]",
		Short: "Print the iptables-restore text switchyard would apply for the given objects",
		Long: `render reads Services, EndpointSlices and Nodes from files and prints, on stdout,
the iptables-restore text that makes a fresh network namespace proxy those
Services, including the jumps from the built-in chains. Apply it with
"iptables-restore --noflush". It needs no root and no cluster.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(o.files) == 0 {
				return usagef("render needs at least one -f FILE")
			}
			if err := o.complete(); err != nil {
				return err
			}
			snap, err := o.load(cmd)
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), proxier.RestoreText(proxier.Render(snap, o.renderConfig(o.family))))
			return err
		},
	}
	o.addFlags(cmd)
	return cmd
}

type explainOptions struct {
	fileOptions
	from    string
	to      string
	proto   string
	output  string
	backend string
}

func newExplainCommand() *cobra.Command {
	o := &explainOptions{}
	cmd := &cobra.Command{
		Use:   "explain --from IP --to IP:PORT [--proto tcp|udp|sctp] [-f FILE...]",
		Short: "Trace a packet through the rules and say where it ends up",
		Long: `explain traces the first packet of a new connection through the nat and filter
tables. With -f it explains the rules those files would produce; without -f it
reads the node's live rules with iptables-save (needs root). A source address
local to the node enters through OUTPUT, any other through PREROUTING.`,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.run(cmd) },
	}
	o.addFlags(cmd)
	cmd.Flags().StringVar(&o.from, "from", "", "Source address of the packet")
	cmd.Flags().StringVar(&o.to, "to", "", "Destination IP:PORT of the packet")
	cmd.Flags().StringVar(&o.proto, "proto", "tcp", "Protocol: tcp, udp or sctp")
	cmd.Flags().StringVarP(&o.output, "output", "o", "text", "Output format: text or json")
	cmd.Flags().StringVar(&o.backend, "iptables-backend", "auto", "For live rules: auto, legacy or nft")
	return cmd
}

func (o *explainOptions) run(cmd *cobra.Command) error {
	if err := o.complete(); err != nil {
		return err
	}
	src, err := netip.ParseAddr(o.from)
	if err != nil {
		return usagef("--from: %q is not an IP address", o.from)
	}
	dst, err := netip.ParseAddrPort(o.to)
	if err != nil {
		return usagef("--to: %q is not IP:PORT", o.to)
	}
	proto := strings.ToLower(o.proto)
	if proto != "tcp" && proto != "udp" && proto != "sctp" {
		return usagef("--proto: %q is not tcp, udp or sctp", o.proto)
	}
	if o.output != "text" && o.output != "json" {
		return usagef("-o: %q is not text or json", o.output)
	}

	var rs *iptables.Ruleset
	var local []netip.Addr
	if len(o.files) > 0 {
		snap, err := o.load(cmd)
		if err != nil {
			return err
		}
		rs, err = iptables.ParseSave(proxier.RestoreText(proxier.Render(snap, o.renderConfig(o.family))))
		if err != nil {
			return fmt.Errorf("internal error: rendered rules do not parse: %w", err)
		}
		local = snap.Node.Addresses
	} else {
		rs, local, err = liveRules(cmd.Context(), o.family, iptables.Backend(o.backend))
		if err != nil {
			return err
		}
	}
	tr := iptables.TracePacket(rs, iptables.TraceInput{
		Packet:     iptables.Packet{Src: src, Dst: dst.Addr(), DstPort: int(dst.Port()), SrcPort: 40000, Protocol: proto},
		LocalAddrs: local,
	})
	out := cmd.OutOrStdout()
	if o.output == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Summary   string   `json:"summary"`
			Endpoints []string `json:"endpoints"`
			Verdicts  []string `json:"verdicts"`
			*iptables.Trace
		}{tr.Summary(), tr.Endpoints(), tr.Verdicts(), tr})
	}
	entry := "PREROUTING (the source is not local to the node)"
	if tr.Local {
		entry = "OUTPUT (the source is local to the node)"
	}
	fmt.Fprintf(out, "%s %s -> %s enters through %s\n", proto, src, dst, entry)
	_, err = fmt.Fprint(out, tr.Text())
	return err
}

// liveRules reads the node's nat and filter tables and its addresses.
func liveRules(ctx context.Context, family v1.IPFamily, backend iptables.Backend) (*iptables.Ruleset, []netip.Addr, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	r, err := iptables.NewRunner(ctx, toFamily(family), backend)
	if err != nil {
		return nil, nil, err
	}
	text, err := r.SaveTables(ctx, "nat", "filter")
	if err != nil {
		return nil, nil, err
	}
	rs, err := iptables.ParseSave(string(text))
	if err != nil {
		return nil, nil, fmt.Errorf("parsing live rules: %w", err)
	}
	local, err := hostpkg.InterfaceAddrs()
	if err != nil {
		return nil, nil, fmt.Errorf("listing local addresses: %w", err)
	}
	return rs, local, nil
}

// removeRules removes switchyard's chains and jumps (ours) and an upstream
// kube-proxy's iptables-mode chains and nftables-mode tables (kubeProxy),
// from every installed backend and family, reporting each to out. The
// nftables error is separate: a host without nft, or a table that will not
// go, is the caller's to judge.
func removeRules(ctx context.Context, out io.Writer, ours, kubeProxy bool) (err, nftErr error) {
	runners := iptables.AvailableRunners(ctx)
	if len(runners) == 0 {
		return fmt.Errorf("no iptables binaries found"), nil
	}
	type owner struct {
		what  string
		owned iptables.Owner
	}
	var owners []owner
	if ours {
		owners = append(owners, owner{"switchyard", iptables.Prefix(proxier.ChainPrefix)})
	}
	if kubeProxy {
		owners = append(owners, owner{"kube-proxy", iptables.KubeProxyChains})
	}
	var errs []error
	for _, r := range runners {
		for _, o := range owners {
			n, err := r.Cleanup(ctx, o.owned)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s %s: %w", r.Backend(), r.Family(), err))
				continue
			}
			fmt.Fprintf(out, "%s %s: removed %d %s chains\n", r.Backend(), r.Family(), n, o.what)
		}
	}
	if kubeProxy {
		var tables []string
		tables, nftErr = iptables.CleanupKubeProxyNFTables(ctx)
		for _, t := range tables {
			fmt.Fprintf(out, "nftables: removed table %s\n", t)
		}
	}
	return errors.Join(errs...), nftErr
}

func newCleanupCommand() *cobra.Command {
	var kubeProxy bool
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Remove every chain and jump rule switchyard owns (or, with --kube-proxy, kube-proxy's), and nothing else",
		Long: `cleanup removes every SWY- chain (also ones an older version left) and every
rule that jumps to one, from every table of every installed iptables backend
and IP family. Other rules, kube-proxy's included, are left alone.

With --kube-proxy it removes instead the rules an old kube-proxy left: its
iptables-mode chains by their exact names and prefixes (KUBE-SERVICES,
KUBE-NODEPORTS, KUBE-POSTROUTING, KUBE-MARK-MASQ, KUBE-FORWARD,
KUBE-EXTERNAL-SERVICES, KUBE-PROXY-FIREWALL, KUBE-PROXY-CANARY, KUBE-SVC-,
KUBE-SVL-, KUBE-EXT-, KUBE-FW-, KUBE-SEP-, KUBE-XLB-) with the jumps to them,
in both backends and both families, and its nftables-mode tables
("ip kube-proxy", "ip6 kube-proxy"). Kubelet's KUBE-FIREWALL and
KUBE-KUBELET-CANARY and every other tool's chains stay. IPVS-mode leftovers
are manual steps: see docs/migrating-from-kube-proxy.md.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			err, nftErr := removeRules(cmdContext(cmd), cmd.OutOrStdout(), !kubeProxy, kubeProxy)
			if nftErr != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "nftables: %v\n", nftErr)
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&kubeProxy, "kube-proxy", false, "Remove the rules an old kube-proxy left instead of switchyard's")
	return cmd
}
