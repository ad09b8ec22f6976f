package iptables

import (
	"encoding/binary"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// tableSummary is what the legacy (x_tables) kernel API says about a table
// without copying its rules out: the number of entries, their total size,
// and where each built-in chain starts and ends. Any rule added, deleted or
// replaced by something of another size changes it; reading it costs a
// system call, where listing one chain of a 10,000-Service nat table costs
// about half a second (the kernel hands over the whole table).
type tableSummary struct {
	validHooks uint32
	hookEntry  [5]uint32
	underflow  [5]uint32
	numEntries uint32
	size       uint32
}

// The getsockopt that returns struct ipt_getinfo (ip6t_getinfo is the same
// layout): IPT_SO_GET_INFO and IP6T_SO_GET_INFO are both 64.
const (
	soGetInfo     = 64
	xtTableMaxLen = 32
	getInfoSize   = xtTableMaxLen + 4 + 5*4 + 5*4 + 4 + 4
)

// legacySummary reads a legacy table's summary in the calling thread's
// network namespace.
func legacySummary(family Family, table string) (tableSummary, error) {
	if len(table) >= xtTableMaxLen {
		return tableSummary{}, fmt.Errorf("table name %q too long", table)
	}
	domain, level := unix.AF_INET, unix.SOL_IP
	if family == IPv6 {
		domain, level = unix.AF_INET6, unix.SOL_IPV6
	}
	fd, err := unix.Socket(domain, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return tableSummary{}, fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	var buf [getInfoSize]byte
	copy(buf[:], table)
	n := uint32(len(buf))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), soGetInfo,
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
	if errno != 0 {
		return tableSummary{}, fmt.Errorf("getsockopt SO_GET_INFO %s: %w", table, errno)
	}
	if n != getInfoSize {
		return tableSummary{}, fmt.Errorf("getsockopt SO_GET_INFO %s: %d bytes, want %d", table, n, getInfoSize)
	}
	le := binary.NativeEndian
	var s tableSummary
	off := xtTableMaxLen
	next := func() uint32 { v := le.Uint32(buf[off:]); off += 4; return v }
	s.validHooks = next()
	for i := range s.hookEntry {
		s.hookEntry[i] = next()
	}
	for i := range s.underflow {
		s.underflow[i] = next()
	}
	s.numEntries = next()
	s.size = next()
	return s, nil
}
