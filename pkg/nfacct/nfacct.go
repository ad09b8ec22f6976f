// Package nfacct owns the kernel's extended accounting objects (nfacct,
// the netfilter subsystem "iptables -m nfacct" counts into), through
// netlink with github.com/vishvananda/netlink's request layer. switchyard
// uses two, with kube-proxy's names, to publish how many packets its
// INVALID-drop rule dropped and how many localhost NodePort packets it
// accepted. Like pkg/conntrack it sits at the host boundary and knows
// nothing about Services.
package nfacct

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Interface creates and reads accounting objects.
type Interface interface {
	// Ensure creates the counter unless it exists.
	Ensure(name string) error
	// Packets reads the counter's packet count.
	Packets(name string) (uint64, error)
}

// ErrNotFound is returned for a counter that does not exist.
var ErrNotFound = errors.New("nfacct object not found")

// netlink message types and attributes (linux/netfilter/nfnetlink_acct.h).
const (
	subsysAcct = 7 // NFNL_SUBSYS_ACCT
	msgNew     = 0 // NFNL_MSG_ACCT_NEW
	msgGet     = 1 // NFNL_MSG_ACCT_GET

	attrName = 1 // NFACCT_NAME
	attrPkts = 2 // NFACCT_PKTS
	// The kernel's limit on names, with the terminating NUL.
	nameMax = 32
)

// Netlink is the kernel's table in the current network namespace.
type Netlink struct{}

func request(msg int, flags int, name string) (*nl.NetlinkRequest, error) {
	if len(name) == 0 || len(name) >= nameMax {
		return nil, fmt.Errorf("nfacct name %q must be 1 to %d bytes", name, nameMax-1)
	}
	req := nl.NewNetlinkRequest(subsysAcct<<8|msg, unix.NLM_F_REQUEST|flags)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.AF_UNSPEC, Version: nl.NFNETLINK_V0})
	req.AddData(nl.NewRtAttr(attrName, nl.ZeroTerminated(name)))
	return req, nil
}

// Ensure creates the counter unless it exists (kube-proxy's order: look it
// up, create it when missing).
func (Netlink) Ensure(name string) error {
	if _, err := (Netlink{}).Packets(name); err == nil {
		return nil
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	req, err := request(msgNew, unix.NLM_F_CREATE|unix.NLM_F_ACK, name)
	if err != nil {
		return err
	}
	if _, err := req.Execute(unix.NETLINK_NETFILTER, 0); err != nil {
		return fmt.Errorf("creating nfacct counter %s: %w", name, err)
	}
	return nil
}

// Packets reads one counter.
func (Netlink) Packets(name string) (uint64, error) {
	req, err := request(msgGet, unix.NLM_F_ACK, name)
	if err != nil {
		return 0, err
	}
	msgs, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	if errors.Is(err, syscall.ENOENT) {
		return 0, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	if err != nil {
		return 0, fmt.Errorf("reading nfacct counter %s: %w", name, err)
	}
	for _, m := range msgs {
		if n, ok := packetsOf(m); ok {
			return n, nil
		}
	}
	return 0, fmt.Errorf("reading nfacct counter %s: no counter in the kernel's answer", name)
}

// packetsOf reads NFACCT_PKTS from one answer (an nfgenmsg, then
// attributes).
func packetsOf(msg []byte) (uint64, bool) {
	if len(msg) < nl.SizeofNfgenmsg {
		return 0, false
	}
	attrs, err := nl.ParseRouteAttr(msg[nl.SizeofNfgenmsg:])
	if err != nil {
		return 0, false
	}
	for _, a := range attrs {
		if a.Attr.Type&^unix.NLA_F_NESTED == attrPkts && len(a.Value) == 8 {
			return binary.BigEndian.Uint64(a.Value), true
		}
	}
	return 0, false
}

// Fake is an in-memory table for unit tests. Unsupported makes every call
// fail as on a kernel without nfacct.
type Fake struct {
	Counters    map[string]uint64
	Unsupported bool
}

// Ensure creates the counter unless it exists.
func (f *Fake) Ensure(name string) error {
	if f.Unsupported {
		return fmt.Errorf("creating nfacct counter %s: %w", name, syscall.EOPNOTSUPP)
	}
	if f.Counters == nil {
		f.Counters = map[string]uint64{}
	}
	if _, ok := f.Counters[name]; !ok {
		f.Counters[name] = 0
	}
	return nil
}

// Packets reads one counter.
func (f *Fake) Packets(name string) (uint64, error) {
	n, ok := f.Counters[name]
	if !ok || f.Unsupported {
		return 0, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	return n, nil
}
