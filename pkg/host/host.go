// Package host owns the node's kernel settings (sysctls under /proc/sys)
// and reads its interface addresses. Like pkg/iptables it sits at the host
// boundary: everything here has a small interface and a fake for tests.
// It knows nothing about Services.
package host

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// Sysctl reads and writes kernel settings such as
// "net/ipv4/conf/all/route_localnet".
type Sysctl interface {
	Get(name string) (string, error)
	Set(name, value string) error
}

// ProcSysctl is the real /proc/sys.
type ProcSysctl struct{ Root string }

func (p ProcSysctl) path(name string) string {
	root := p.Root
	if root == "" {
		root = "/proc/sys"
	}
	return filepath.Join(root, filepath.FromSlash(name))
}

// Get returns a setting's value.
func (p ProcSysctl) Get(name string) (string, error) {
	data, err := os.ReadFile(p.path(name))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(data)), nil
}

// Set writes a setting.
func (p ProcSysctl) Set(name, value string) error {
	return os.WriteFile(p.path(name), []byte(value+"\n"), 0o640)
}

// Ensure sets name to value unless it already has it. It reports whether
// it changed anything.
func Ensure(s Sysctl, name, value string) (bool, error) {
	cur, err := s.Get(name)
	if err == nil && cur == value {
		return false, nil
	}
	if err := s.Set(name, value); err != nil {
		return false, fmt.Errorf("setting %s=%s (it is %q): %w", name, value, cur, err)
	}
	return true, nil
}

// FakeSysctl is an in-memory Sysctl for tests.
type FakeSysctl struct {
	mu     sync.Mutex
	Values map[string]string
	// ReadOnly makes Set fail, as inside an unprivileged container.
	ReadOnly bool
}

func (f *FakeSysctl) Get(name string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.Values[name]
	if !ok {
		return "", os.ErrNotExist
	}
	return v, nil
}

func (f *FakeSysctl) Set(name, value string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ReadOnly {
		return os.ErrPermission
	}
	if f.Values == nil {
		f.Values = map[string]string{}
	}
	f.Values[name] = value
	return nil
}

// RouteLocalnet is the sysctl localhost NodePorts need.
const RouteLocalnet = "net/ipv4/conf/all/route_localnet"

// InterfaceAddrs returns the addresses on the node's interfaces.
func InterfaceAddrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out, nil
}

// BridgeNetfilterProblem returns a warning with the fix when the node has
// Linux bridges (pods may sit on one) but bridged traffic does not pass
// through iptables, so Service rules would miss pod-to-pod traffic on the
// same bridge; "" when all is well or there is no bridge.
func BridgeNetfilterProblem(sys Sysctl) string {
	bridges, _ := filepath.Glob("/sys/class/net/*/bridge")
	if len(bridges) == 0 {
		return ""
	}
	v, err := sys.Get("net/bridge/bridge-nf-call-iptables")
	switch {
	case err != nil:
		return "the br_netfilter module is not loaded but the node has bridges: traffic between pods on one bridge will bypass Service rules; fix: modprobe br_netfilter && sysctl -w net.bridge.bridge-nf-call-iptables=1"
	case v != "1":
		return "net.bridge.bridge-nf-call-iptables is 0 but the node has bridges: traffic between pods on one bridge will bypass Service rules; fix: sysctl -w net.bridge.bridge-nf-call-iptables=1"
	}
	return ""
}

// SetOOMScoreAdj writes this process's /proc/self/oom_score_adj (as
// kube-proxy's --oom-score-adj does for itself).
func SetOOMScoreAdj(v int) error {
	return SetOOMScoreAdjAt("/proc/self/oom_score_adj", v)
}

// SetOOMScoreAdjAt writes v to an oom_score_adj file (a test's stand-in).
func SetOOMScoreAdjAt(path string, v int) error {
	if v < -1000 || v > 1000 {
		return fmt.Errorf("oom_score_adj %d is not within [-1000, 1000]", v)
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(v)), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
