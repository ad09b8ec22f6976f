package host

import (
	"errors"
	"fmt"
	"strconv"
	"time"
)

// ConntrackConfig is the conntrack tuning kube-proxy applies, with its flag
// names. Zero values leave a setting alone.
type ConntrackConfig struct {
	MaxPerCore       int           // --conntrack-max-per-core
	Min              int           // --conntrack-min
	TCPEstablished   time.Duration // --conntrack-tcp-timeout-established
	TCPCloseWait     time.Duration // --conntrack-tcp-timeout-close-wait
	TCPBeLiberal     bool          // --conntrack-tcp-be-liberal
	UDPTimeout       time.Duration // --conntrack-udp-timeout
	UDPStreamTimeout time.Duration // --conntrack-udp-timeout-stream
}

// Conntrack sysctls (under /proc/sys).
const (
	ConntrackMax            = "net/netfilter/nf_conntrack_max"
	ConntrackTCPEstablished = "net/netfilter/nf_conntrack_tcp_timeout_established"
	ConntrackTCPCloseWait   = "net/netfilter/nf_conntrack_tcp_timeout_close_wait"
	ConntrackTCPBeLiberal   = "net/netfilter/nf_conntrack_tcp_be_liberal"
	ConntrackUDPTimeout     = "net/netfilter/nf_conntrack_udp_timeout"
	ConntrackUDPStream      = "net/netfilter/nf_conntrack_udp_timeout_stream"
)

// ConntrackMaxFor is nf_conntrack_max for numCPU cores: max-per-core times
// the cores, at least min; 0 when max-per-core is 0 (leave it alone).
func ConntrackMaxFor(c ConntrackConfig, numCPU int) int {
	if c.MaxPerCore <= 0 {
		return 0
	}
	scaled := c.MaxPerCore * numCPU
	if scaled < c.Min {
		return c.Min
	}
	return scaled
}

// ApplyConntrack writes the settings. sys is /proc/sys; params is
// /sys/module/nf_conntrack/parameters (for hashsize, raised to max/4 when
// smaller). Every setting that cannot be written is returned as one error
// in the joined result; the others are still written.
func ApplyConntrack(sys, params Sysctl, c ConntrackConfig, numCPU int) error {
	var errs []error
	set := func(name string, v int) {
		if _, err := Ensure(sys, name, strconv.Itoa(v)); err != nil {
			errs = append(errs, err)
		}
	}
	if max := ConntrackMaxFor(c, numCPU); max > 0 {
		set(ConntrackMax, max)
		if hs, err := params.Get("hashsize"); err == nil {
			if n, err := strconv.Atoi(hs); err == nil && n < max/4 {
				if err := params.Set("hashsize", strconv.Itoa(max/4)); err != nil {
					errs = append(errs, fmt.Errorf("setting conntrack hashsize=%d: %w", max/4, err))
				}
			}
		}
	}
	for _, s := range []struct {
		name string
		d    time.Duration
	}{
		{ConntrackTCPEstablished, c.TCPEstablished},
		{ConntrackTCPCloseWait, c.TCPCloseWait},
		{ConntrackUDPTimeout, c.UDPTimeout},
		{ConntrackUDPStream, c.UDPStreamTimeout},
	} {
		if s.d > 0 {
			set(s.name, int(s.d/time.Second))
		}
	}
	if c.TCPBeLiberal {
		set(ConntrackTCPBeLiberal, 1)
	}
	return errors.Join(errs...)
}
