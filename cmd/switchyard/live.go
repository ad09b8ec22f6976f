package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	hostpkg "github.com/switchyard-proxy/switchyard/pkg/host"
	"github.com/switchyard-proxy/switchyard/pkg/iptables"
	"github.com/switchyard-proxy/switchyard/pkg/nfacct"
	"github.com/switchyard-proxy/switchyard/pkg/proxier"
)

// families parses --ip-family for the live commands: ipv4, ipv6 or both.
func families(s string) ([]v1.IPFamily, error) {
	switch strings.ToLower(s) {
	case "", "both", "all":
		return []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}, nil
	}
	f, err := parseFamily(s)
	return []v1.IPFamily{f}, err
}

func toFamily(f v1.IPFamily) iptables.Family {
	if f == v1.IPv6Protocol {
		return iptables.IPv6
	}
	return iptables.IPv4
}

func newRulesCommand() *cobra.Command {
	var family, backend string
	cmd := &cobra.Command{
		Use:   "rules NAMESPACE/NAME",
		Short: "Print one Service's live rules on this node",
		Long: `rules reads the node's live tables (iptables-save, root) and prints every
rule switchyard owns that belongs to the Service: its chains and the rules
that send traffic into them. It needs no API server.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, name, ok := strings.Cut(args[0], "/")
			if !ok || ns == "" || name == "" {
				return usagef("%q is not NAMESPACE/NAME", args[0])
			}
			fams, err := families(family)
			if err != nil {
				return err
			}
			ctx := cmdContext(cmd)
			found := 0
			for _, f := range fams {
				r, err := iptables.NewRunner(ctx, toFamily(f), iptables.Backend(backend))
				if err != nil {
					if len(fams) > 1 {
						continue
					}
					return err
				}
				out, err := r.SaveTables(ctx, "nat", "filter")
				if err != nil {
					return err
				}
				table := ""
				for _, line := range strings.Split(string(out), "\n") {
					if strings.HasPrefix(line, "*") {
						table = line[1:]
					}
					chain, rest, _ := strings.Cut(strings.TrimPrefix(line, "-A "), " ")
					if strings.HasPrefix(line, "-A ") && strings.HasPrefix(chain, proxier.ChainPrefix) && proxier.Mentions(rest, ns+"/"+name) {
						fmt.Fprintf(cmd.OutOrStdout(), "%s %-6s %s\n", f, table, line)
						found++
					}
				}
			}
			if found == 0 {
				return fmt.Errorf("no rules for %s/%s on this node", ns, name)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&family, "ip-family", "both", "ipv4, ipv6 or both")
	cmd.Flags().StringVar(&backend, "iptables-backend", "auto", "auto, legacy or nft")
	return cmd
}

type diffOptions struct {
	ruleOptions
	kubeconfig, master, family, backend string
}

func newDiffCommand() *cobra.Command {
	o := &diffOptions{}
	cmd := &cobra.Command{
		Use:   "diff",
		Short: "Show what the next sync would change on this node, against the live rules",
		Long: `diff reads the Services, EndpointSlices and this node's Node from the API server
and the node's live rules (root), renders what switchyard would program, and
prints the difference chain by chain. It changes nothing. Both sides are
compared as iptables-save spells them: the desired rules are loaded into a
throwaway network namespace with the node's backend and read back.`,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.run(cmd) },
	}
	o.ruleOptions.AddFlags(cmd.Flags())
	cmd.Flags().StringVar(&o.kubeconfig, "kubeconfig", "", "Path to a kubeconfig file (default: in-cluster configuration)")
	cmd.Flags().StringVar(&o.master, "master", "", "The address of the API server")
	cmd.Flags().StringVar(&o.family, "ip-family", "both", "ipv4, ipv6 or both")
	cmd.Flags().StringVar(&o.backend, "iptables-backend", "auto", "auto, legacy or nft")
	return cmd
}

func (o *diffOptions) run(cmd *cobra.Command) error {
	if err := o.Complete(); err != nil {
		return err
	}
	if err := o.Validate(); err != nil {
		return err
	}
	fams, err := families(o.family)
	if err != nil {
		return err
	}
	d := &daemonOptions{kubeconfig: o.kubeconfig, master: o.master}
	cfg, err := d.restConfig()
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx := cmdContext(cmd)
	snap, err := o.snapshotFromAPI(ctx, client)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	total := 0
	for _, f := range fams {
		r, err := iptables.NewRunner(ctx, toFamily(f), iptables.Backend(o.backend))
		if err != nil || r.Probe() != nil {
			if len(fams) > 1 {
				continue
			}
			return fmt.Errorf("%s: iptables unusable: %v", f, err)
		}
		live, err := r.SaveTables(ctx, "nat", "filter")
		if err != nil {
			return err
		}
		cfg := o.renderConfig(f)
		// The daemon counts into kube-proxy's nfacct counters when it could
		// create them: where they exist, its rules name them.
		_, errInvalid := nfacct.Netlink{}.Packets(proxier.NFAcctInvalidDropped)
		_, errLocal := nfacct.Netlink{}.Packets(proxier.NFAcctLocalhostNodePorts)
		cfg.NFAcctInvalid, cfg.NFAcctLocalhost = errInvalid == nil, errLocal == nil
		desired, err := r.CanonicalSave(ctx, proxier.RestoreText(proxier.Render(snap, cfg)))
		if err != nil {
			return err
		}
		diffs := iptables.DiffSaves(string(live), desired, proxier.ChainPrefix)
		total += len(diffs)
		printDiffs(out, f, diffs)
	}
	if total == 0 {
		fmt.Fprintln(out, "No differences: the live rules are what switchyard would program.")
	}
	return nil
}

func printDiffs(out io.Writer, f v1.IPFamily, diffs []iptables.ChainDiff) {
	for _, d := range diffs {
		fmt.Fprintf(out, "%s %s %s (%s)\n", f, d.Table, d.Chain, d.Kind)
		for _, r := range d.Removed {
			fmt.Fprintf(out, "  - %s\n", r)
		}
		for _, r := range d.Added {
			fmt.Fprintf(out, "  + %s\n", r)
		}
	}
}

// snapshotFromAPI lists what the daemon would watch, once.
func (o *diffOptions) snapshotFromAPI(ctx context.Context, client kubernetes.Interface) (*proxier.Snapshot, error) {
	f := o.filter()
	svcs, err := client.CoreV1().Services("").List(ctx, metav1.ListOptions{LabelSelector: f.ServiceLabelSelector()})
	if err != nil {
		return nil, fmt.Errorf("listing Services: %w", err)
	}
	slices, err := client.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{LabelSelector: "!" + proxier.LabelHeadless})
	if err != nil {
		return nil, fmt.Errorf("listing EndpointSlices: %w", err)
	}
	var nodes []*v1.Node
	if node, err := client.CoreV1().Nodes().Get(ctx, o.hostname, metav1.GetOptions{}); err == nil {
		nodes = append(nodes, node)
	}
	var sp []*v1.Service
	for i := range svcs.Items {
		sp = append(sp, &svcs.Items[i])
	}
	var sl []*discovery.EndpointSlice
	for i := range slices.Items {
		sl = append(sl, &slices.Items[i])
	}
	snap, _ := proxier.SnapshotFromObjects(f, o.hostname, sp, sl, nodes)
	if addrs, err := hostpkg.InterfaceAddrs(); err == nil {
		snap.HostAddrs = addrs
	}
	return snap, nil
}

func cmdContext(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}
