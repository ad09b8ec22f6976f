// Command switchyard is a kube-proxy replacement that programs Services with
// iptables. The root command runs the node daemon; subcommands render, explain
// and clean up rules offline or on the live node.
package main

import (
	"errors"
	goflag "flag"
	"fmt"
	"os"
	"runtime/debug"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// usageError is bad input from the user (flags, files): exit code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func main() {
	// switchyard's heap is mostly a long-lived cache (informers, the model,
	// every Service's rendered chains) and a sync allocates in proportion
	// to what changed, so collecting at 50% growth instead of Go's 100%
	// costs little CPU and keeps the node's memory near what is live. GOGC
	// and GOMEMLIMIT in the environment still decide when set.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	os.Exit(run(os.Args[1:]))
}

const defaultGCPercent = 50

func run(args []string) int {
	root := newRootCommand()
	root.SetArgs(args)
	err := root.Execute()
	klog.Flush()
	if err == nil {
		return 0
	}
	fmt.Fprintf(os.Stderr, "switchyard: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

func newRootCommand() *cobra.Command { return newRootCommandWith(newDaemonOptions()) }

// newRootCommandWith binds the root command's flags to o.
func newRootCommandWith(o *daemonOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "switchyard",
		Short: "A kube-proxy replacement that programs Services with iptables",
		Long: `switchyard watches Services, EndpointSlices and its own Node and programs
the node's iptables so every Service behaves as under kube-proxy's iptables mode.
Run as root on a node (or inside a node's network namespace).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if v := o.kp.printVersion; v != "" && v != "false" {
				printVersion(cmd.OutOrStdout(), v == "raw")
				return nil
			}
			return o.start(cmd)
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	klogFlags := goflag.NewFlagSet("klog", goflag.ContinueOnError)
	klog.InitFlags(klogFlags)
	cmd.PersistentFlags().AddGoFlagSet(klogFlags)
	o.AddFlags(cmd.Flags())

	cmd.AddCommand(newRenderCommand(), newExplainCommand(), newCleanupCommand(), newRulesCommand(), newDiffCommand(), &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), "switchyard", version) },
	})
	for _, c := range cmd.Commands() {
		c.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
		c.Args = wrapArgs(c.Args)
	}
	return cmd
}

func wrapArgs(f cobra.PositionalArgs) cobra.PositionalArgs {
	if f == nil {
		f = cobra.NoArgs
	}
	return func(cmd *cobra.Command, args []string) error {
		if err := f(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}
