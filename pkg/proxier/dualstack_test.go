package proxier

import (
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

func v6Config() RenderConfig {
	c := defaultConfig()
	c.Family = v1.IPv6Protocol
	c.ClusterCIDR = netip.MustParsePrefix("fd00:10:244::/48")
	return c
}

func TestIPv6Rules(t *testing.T) {
	snap := loadSnapshot(t, "dualstack.yaml", "node-a")
	r := Render(snap, v6Config())
	eps := []string{"[fd00:10:244:1::70]:8080", "[fd00:10:244:2::70]:8080"}
	runFlows(t, r, []flow{
		{src: netip.MustParseAddr("fd00:10:244:3::9"), dst: "[fd00:96::70:1]:80", proto: "tcp", want: want{endpoints: eps, masq: no, verdict: "ACCEPT"}},
		{src: netip.MustParseAddr("fd00:50::10"), dst: "[fd00:96::70:1]:80", proto: "tcp", want: want{endpoints: eps, masq: yes, verdict: "ACCEPT"}},
		{src: netip.MustParseAddr("2001:db8:1::5"), dst: "[fd00:50::10]:30700", proto: "tcp", want: want{endpoints: eps, masq: yes, verdict: "ACCEPT"}},
		{src: netip.MustParseAddr("2001:db8:1::5"), dst: "[2001:db8::70]:80", proto: "tcp", want: want{endpoints: eps, masq: yes, verdict: "ACCEPT"}},
		{src: netip.MustParseAddr("fd00:10:244:3::9"), dst: "[fd00:96::70:1]:53", proto: "udp", want: want{endpoints: []string{"[fd00:10:244:1::70]:5353", "[fd00:10:244:2::70]:5353"}, verdict: "ACCEPT"}},
		{src: netip.MustParseAddr("fd00:10:244:3::9"), dst: "[fd00:96::70:2]:80", proto: "tcp", want: want{verdict: "REJECT"}},
		// NodePorts never answer on ::1, and there is no localnet guard in IPv6.
		{src: netip.MustParseAddr("::1"), dst: "[::1]:30700", proto: "tcp", want: want{verdict: "ACCEPT"}},
	})
	text := RestoreText(r)
	for _, bad := range []string{"10.96.70.1", "10.244.", "127.0.0.0/8", "192.168.50.10"} {
		if strings.Contains(text, bad) {
			t.Errorf("IPv6 rules contain IPv4 %q", bad)
		}
	}
	// The IPv4 side holds only IPv4.
	if v4 := RestoreText(Render(snap, defaultConfig())); strings.Contains(v4, "fd00:") || strings.Contains(v4, "2001:db8") {
		t.Error("IPv4 rules contain IPv6 addresses")
	}
}
