// Package netns builds throwaway network namespaces for tests that need
// real iptables and real packets: nodes, pods and links between them. It
// runs `ip` from iproute2 and switches threads into namespaces with setns;
// nothing it creates outlives the test.
package netns

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// RequireRoot skips the test when it cannot create namespaces, with the
// reason, except under CI (CI set), where it fails: CI must run these.
func RequireRoot(t testing.TB, tools ...string) {
	t.Helper()
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
		return
	}
	msg := fmt.Sprintf("needs %s (run `make setup` as root)", strings.Join(missing, ", "))
	if os.Getenv("CI") != "" {
		t.Fatalf("CI is set and this test cannot run: %s", msg)
	}
	t.Skip(msg)
}

var counter atomic.Int32

// NS is one network namespace.
type NS struct {
	Name string
	t    testing.TB
}

// New creates a namespace with loopback up; it is deleted when the test ends.
func New(t testing.TB, role string) *NS {
	t.Helper()
	name := fmt.Sprintf("swy-%s-%d-%d", role, os.Getpid()%100000, counter.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	n := &NS{Name: name, t: t}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	n.MustRun("ip", "link", "set", "lo", "up")
	return n
}

// Run runs a command inside the namespace and returns its combined output.
func (n *NS) Run(args ...string) (string, error) {
	return n.RunInput(nil, args...)
}

// RunInput is Run with stdin.
func (n *NS) RunInput(stdin []byte, args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s in %s: %w: %s", strings.Join(args, " "), n.Name, err, out)
	}
	return string(out), nil
}

// MustRun is Run that fails the test on error.
func (n *NS) MustRun(args ...string) string {
	n.t.Helper()
	out, err := n.Run(args...)
	if err != nil {
		n.t.Fatal(err)
	}
	return out
}

// Do runs fn on an OS thread inside the namespace. Sockets fn opens belong
// to the namespace for their whole life, and processes it starts run in it.
// The thread is never returned to the Go scheduler's pool: it ends with fn.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with this goroutine
		fd, err := unix.Open("/var/run/netns/"+n.Name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("opening namespace %s: %w", n.Name, err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering namespace %s: %w", n.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Veth joins two namespaces with a veth pair named aIf (in a) and bIf (in b).
func Veth(t testing.TB, a *NS, aIf string, b *NS, bIf string) {
	t.Helper()
	tmp := fmt.Sprintf("swyv%d", counter.Add(1))
	if out, err := exec.Command("ip", "link", "add", tmp, "type", "veth", "peer", "name", tmp+"p").CombinedOutput(); err != nil {
		t.Fatalf("creating veth: %v: %s", err, out)
	}
	for _, step := range [][]string{
		{"ip", "link", "set", tmp, "netns", a.Name},
		{"ip", "link", "set", tmp + "p", "netns", b.Name},
		{"ip", "netns", "exec", a.Name, "ip", "link", "set", tmp, "name", aIf},
		{"ip", "netns", "exec", b.Name, "ip", "link", "set", tmp + "p", "name", bIf},
		{"ip", "netns", "exec", a.Name, "ip", "link", "set", aIf, "up"},
		{"ip", "netns", "exec", b.Name, "ip", "link", "set", bIf, "up"},
	} {
		if out, err := exec.Command(step[0], step[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(step, " "), err, out)
		}
	}
}

// Node is a node namespace with an underlay address and a default route,
// ready to route to pods.
type Node struct {
	*NS
	IP   string
	pods int
}

// NewNode creates a node namespace whose own address is ip (an IPv4
// address), with forwarding on and a default route, as a real node has.
func NewNode(t testing.TB, ip string) *Node {
	t.Helper()
	n := &Node{NS: New(t, "node"), IP: ip}
	// A veth whose peer stays in the node: not every kernel has the dummy
	// link type. Multi-node clusters attach the peer to a bridge instead.
	n.MustRun("ip", "link", "add", "underlay0", "type", "veth", "peer", "name", "underlay0p")
	n.MustRun("ip", "addr", "add", ip+"/24", "dev", "underlay0")
	n.MustRun("ip", "link", "set", "underlay0", "up")
	n.MustRun("ip", "link", "set", "underlay0p", "up")
	gw := ip[:strings.LastIndex(ip, ".")] + ".254"
	n.MustRun("ip", "route", "add", "default", "via", gw, "dev", "underlay0", "onlink")
	n.MustRun("sysctl", "-qw", "net.ipv4.ip_forward=1")
	return n
}

// Pod is a pod namespace behind a node.
type Pod struct {
	*NS
	IP string
}

// AddPod creates a pod namespace with address ip (/32) behind the node: a
// veth, a host route on the node, and a default route in the pod via the
// node's address.
func (n *Node) AddPod(t testing.TB, ip string) *Pod {
	t.Helper()
	n.pods++
	p := &Pod{NS: New(t, "pod"), IP: ip}
	hostIf := fmt.Sprintf("veth%d", n.pods)
	Veth(t, n.NS, hostIf, p.NS, "eth0")
	p.MustRun("ip", "addr", "add", ip+"/32", "dev", "eth0")
	p.MustRun("ip", "route", "add", "default", "via", n.IP, "dev", "eth0", "onlink")
	n.MustRun("ip", "route", "add", ip+"/32", "dev", hostIf)
	return p
}
