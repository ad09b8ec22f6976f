// Package netns builds throwaway network namespaces for tests that need
// real iptables and real packets: nodes, pods, an underlay bridge and the
// links between them. It runs `ip` from iproute2 and switches threads into
// namespaces with setns; nothing it creates outlives its owner's cleanup.
package netns

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// T is what the helpers need from their owner: testing.TB has it, and the
// local cluster behind `make run` provides its own.
type T interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// RequireRoot skips the test when it cannot create namespaces, with the
// reason, except under CI (CI set), where it fails: CI must run these.
func RequireRoot(t testing.TB, tools ...string) {
	t.Helper()
	if msg := Missing(tools...); msg != "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set and this test cannot run: %s", msg)
		}
		t.Skip(msg)
	}
}

// Missing says what is missing to run namespace tests (root, tools), or "".
func Missing(tools ...string) string {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return ""
	}
	return fmt.Sprintf("needs %s (run `make setup` as root)", strings.Join(missing, ", "))
}

var counter atomic.Int32

// NS is one network namespace. The zero Name means the root namespace.
type NS struct {
	Name string
	t    T
}

// Root is the root network namespace (for attaching it to an underlay).
func Root(t T) *NS { return &NS{t: t} }

// New creates a uniquely named namespace for a role ("node", "pod", ...).
func New(t T, role string) *NS {
	t.Helper()
	return NewNamed(t, UniqueName(role))
}

// UniqueName returns a namespace name for a role, unique on this machine.
func UniqueName(role string) string {
	return fmt.Sprintf("swy-%s-%d-%d", role, os.Getpid()%100000, counter.Add(1))
}

// Delete removes the namespace now (cleanup would do it later).
func (n *NS) Delete() error {
	if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %w: %s", n.Name, err, out)
	}
	return nil
}

// NewNamed creates the namespace name (replacing a stale one left by a
// killed run) with loopback up; it is deleted at cleanup.
func NewNamed(t T, name string) *NS {
	t.Helper()
	_ = exec.Command("ip", "netns", "del", name).Run()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	n := &NS{Name: name, t: t}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	n.MustRun("ip", "link", "set", "lo", "up")
	return n
}

func (n *NS) command(args ...string) *exec.Cmd {
	if n.Name == "" {
		return exec.Command(args[0], args[1:]...)
	}
	return exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...)
}

// Command returns a command that runs inside the namespace.
func (n *NS) Command(args ...string) *exec.Cmd { return n.command(args...) }

// Run runs a command inside the namespace and returns its combined output.
func (n *NS) Run(args ...string) (string, error) {
	return n.RunInput(nil, args...)
}

// RunInput is Run with stdin.
func (n *NS) RunInput(stdin []byte, args ...string) (string, error) {
	cmd := n.command(args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		where := n.Name
		if where == "" {
			where = "the root namespace"
		}
		return string(out), fmt.Errorf("%s in %s: %w: %s", strings.Join(args, " "), where, err, out)
	}
	return string(out), nil
}

// MustRun is Run that fails the owner on error.
func (n *NS) MustRun(args ...string) string {
	n.t.Helper()
	out, err := n.Run(args...)
	if err != nil {
		n.t.Fatalf("%v", err)
	}
	return out
}

// Do runs fn on an OS thread inside the namespace. Sockets fn opens belong
// to the namespace for their whole life, and processes it starts run in it.
// Afterwards the thread goes back to its own namespace and to the Go
// scheduler; if that fails the thread is discarded instead (it ends with
// the goroutine), so no other goroutine ever runs in the wrong namespace.
// (Threads must not end needlessly: a child started with Pdeathsig dies
// with the thread that forked it.)
func (n *NS) Do(fn func() error) error {
	if n.Name == "" {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		returned := false
		defer func() {
			// fn called t.Fatal (runtime.Goexit) or panicked: report it
			// rather than leave the caller waiting forever.
			if !returned {
				errc <- fmt.Errorf("the function run in namespace %s did not return (t.Fatal or panic inside Do)", n.Name)
			}
		}()
		runtime.LockOSThread()
		orig, err := unix.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			returned = true
			errc <- fmt.Errorf("opening this thread's namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		fd, err := unix.Open("/var/run/netns/"+n.Name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			returned = true
			errc <- fmt.Errorf("opening namespace %s: %w", n.Name, err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			returned = true
			errc <- fmt.Errorf("entering namespace %s: %w", n.Name, err)
			return
		}
		err = fn()
		returned = true
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		} // else: stay locked; the thread is discarded when this goroutine ends
		errc <- err
	}()
	return <-errc
}

// Veth joins two namespaces with a veth pair named aIf (in a) and bIf (in
// b), both up. Deleting either namespace removes the pair; a pair with one
// end in the root namespace is deleted at cleanup.
func Veth(t T, a *NS, aIf string, b *NS, bIf string) {
	t.Helper()
	// A root-side interface left by a killed run would block the rename.
	for _, end := range []struct {
		ns   *NS
		name string
	}{{a, aIf}, {b, bIf}} {
		if end.ns.Name == "" {
			_ = exec.Command("ip", "link", "del", end.name).Run()
		}
	}
	tmp := fmt.Sprintf("swyv%d-%d", os.Getpid()%100000, counter.Add(1))
	if out, err := exec.Command("ip", "link", "add", tmp, "type", "veth", "peer", "name", tmp+"p").CombinedOutput(); err != nil {
		t.Fatalf("creating veth: %v: %s", err, out)
	}
	move := func(ns *NS, dev, name string) [][]string {
		var steps [][]string
		if ns.Name != "" {
			steps = append(steps, []string{"ip", "link", "set", dev, "netns", ns.Name})
		}
		return append(steps,
			ns.command("ip", "link", "set", dev, "name", name).Args,
			ns.command("ip", "link", "set", name, "up").Args)
	}
	steps := append(move(a, tmp, aIf), move(b, tmp+"p", bIf)...)
	for _, step := range steps {
		if out, err := exec.Command(step[0], step[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(step, " "), err, out)
		}
	}
	if a.Name == "" || b.Name == "" {
		rootIf := aIf
		if b.Name == "" {
			rootIf = bIf
		}
		t.Cleanup(func() { _ = exec.Command("ip", "link", "del", rootIf).Run() })
	}
}

// Bridge is an underlay: a namespace holding one bridge that other
// namespaces attach to.
type Bridge struct {
	*NS
	ports int
}

// NewBridge creates the underlay namespace and its bridge.
func NewBridge(t T, name string) *Bridge {
	t.Helper()
	b := &Bridge{NS: NewNamed(t, name)}
	b.MustRun("ip", "link", "add", "br0", "type", "bridge")
	b.MustRun("ip", "link", "set", "br0", "up")
	return b
}

// Attach connects ns to the bridge with an interface ifname holding cidr
// (e.g. "192.168.77.1/24").
func (b *Bridge) Attach(t T, ns *NS, ifname, cidr string) {
	t.Helper()
	b.ports++
	port := fmt.Sprintf("p%d", b.ports)
	Veth(t, ns, ifname, b.NS, port)
	b.MustRun("ip", "link", "set", port, "master", "br0")
	ns.MustRun("ip", "addr", "add", cidr, "dev", ifname)
}

// Node is a node namespace with an underlay address and a default route,
// ready to route to its pods.
type Node struct {
	*NS
	IP string
	// IP6 is the node's IPv6 underlay address, when it has one.
	IP6  string
	pods int // interfaces ever created: names are never reused
	mu   sync.Mutex
}

// NewNode creates a standalone node namespace whose own address is ip (an
// IPv4 address), with forwarding on and a default route, as a real node
// has. Its underlay is a veth whose peer stays in the node.
func NewNode(t T, ip string) *Node {
	t.Helper()
	n := &Node{NS: New(t, "node"), IP: ip}
	n.MustRun("ip", "link", "add", "underlay0", "type", "veth", "peer", "name", "underlay0p")
	n.MustRun("ip", "addr", "add", ip+"/24", "dev", "underlay0")
	n.MustRun("ip", "link", "set", "underlay0", "up")
	n.MustRun("ip", "link", "set", "underlay0p", "up")
	n.finish(ip[:strings.LastIndex(ip, ".")]+".253", "underlay0")
	return n
}

// NewNodeOn creates a node namespace called name on an underlay bridge,
// with address ip/24 there and a default route via gw (an address nobody
// answers for, so traffic for unknown destinations dies on the underlay).
func NewNodeOn(t T, name string, underlay *Bridge, ip, gw string) *Node {
	t.Helper()
	n := &Node{NS: NewNamed(t, name), IP: ip}
	underlay.Attach(t, n.NS, "eth0", ip+"/24")
	n.finish(gw, "eth0")
	return n
}

// EnableIPv6 gives the node an IPv6 underlay address ip6/64 on its eth0
// (no duplicate address detection, so it is usable at once), IPv6
// forwarding, and a default route via gw6 (an address nobody answers for).
func (n *Node) EnableIPv6(t T, ip6, gw6 string) {
	t.Helper()
	for _, args := range [][]string{
		{"sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"},
		{"sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"},
		{"sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"},
		{"ip", "-6", "addr", "add", ip6 + "/64", "dev", "eth0", "nodad"},
		{"ip", "-6", "route", "add", "default", "via", gw6, "dev", "eth0", "onlink"},
	} {
		if _, err := n.Run(args...); err != nil {
			t.Fatalf("%v", err)
		}
	}
	n.IP6 = ip6
}

// PodGatewayIPv6 is the link-local address every node-side pod veth has:
// pods route IPv6 through it.
const PodGatewayIPv6 = "fe80::1"

func (n *Node) finish(gw, dev string) {
	n.MustRun("ip", "route", "add", "default", "via", gw, "dev", dev, "onlink")
	n.MustRun("sysctl", "-qw", "net.ipv4.ip_forward=1")
}

// Pod is a pod namespace behind a node.
type Pod struct {
	*NS
	IP  string
	IP6 string // empty for a single-stack pod
}

// AddPod creates a pod namespace with address ip (/32) behind the node: a
// veth, a host route on the node, and a default route in the pod via the
// node's address.
func (n *Node) AddPod(t T, ip string) *Pod {
	t.Helper()
	return n.AddPodNamed(t, UniqueName("pod"), ip)
}

// AddPodNamed is AddPod with the namespace name chosen by the caller.
func (n *Node) AddPodNamed(t T, name, ip string) *Pod {
	t.Helper()
	return n.AddDualStackPod(t, name, ip, "")
}

// AddDualStackPod is AddPodNamed with an IPv6 address (/128) too, when ip6
// is not empty: the pod routes IPv6 via the node-side veth's link-local
// PodGatewayIPv6, the node routes ip6 to the veth.
func (n *Node) AddDualStackPod(t T, name, ip, ip6 string) *Pod {
	t.Helper()
	n.mu.Lock()
	n.pods++
	hostIf := fmt.Sprintf("veth%d", n.pods)
	n.mu.Unlock()
	p := &Pod{NS: NewNamed(t, name), IP: ip, IP6: ip6}
	type step struct {
		ns   *NS
		args []string
	}
	var steps []step
	if ip6 != "" {
		// Before the veth exists, so its addresses skip DAD.
		steps = append(steps, step{p.NS, []string{"sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"}},
			step{p.NS, []string{"sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"}})
		for _, s := range steps {
			if _, err := s.ns.Run(s.args...); err != nil {
				t.Fatalf("%v", err)
			}
		}
		steps = nil
	}
	Veth(t, n.NS, hostIf, p.NS, "eth0")
	steps = append(steps,
		step{p.NS, []string{"ip", "addr", "add", ip + "/32", "dev", "eth0"}},
		step{p.NS, []string{"ip", "route", "add", "default", "via", n.IP, "dev", "eth0", "onlink"}},
		step{n.NS, []string{"ip", "route", "add", ip + "/32", "dev", hostIf}})
	if ip6 != "" {
		steps = append(steps,
			step{n.NS, []string{"ip", "-6", "addr", "add", PodGatewayIPv6 + "/64", "dev", hostIf, "nodad"}},
			step{p.NS, []string{"ip", "-6", "addr", "add", ip6 + "/128", "dev", "eth0", "nodad"}},
			step{p.NS, []string{"ip", "-6", "route", "add", "default", "via", PodGatewayIPv6, "dev", "eth0"}},
			step{n.NS, []string{"ip", "-6", "route", "add", ip6 + "/128", "dev", hostIf}})
	}
	for _, step := range steps {
		if _, err := step.ns.Run(step.args...); err != nil {
			t.Fatalf("%v", err)
		}
	}
	return p
}

// Processes returns the processes in this namespace whose command line
// contains substr. Processes in other namespaces (another test's, a
// benchmark's) are never listed.
func (n *NS) Processes(substr string) []int {
	out, err := exec.Command("ip", "netns", "pids", n.Name).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !strings.Contains(strings.ReplaceAll(string(cmdline), "\x00", " "), substr) {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// Kill sends SIGKILL to the processes in this namespace whose command line
// contains substr (see Processes), and reports how many it signalled.
func (n *NS) Kill(substr string) int {
	killed := 0
	for _, pid := range n.Processes(substr) {
		if unix.Kill(pid, unix.SIGKILL) == nil {
			killed++
		}
	}
	return killed
}
