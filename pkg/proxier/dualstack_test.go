package proxier

import (
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
)

func v6Config() RenderConfig {
	c := defaultConfig()
	c.Family = v1.IPv6Protocol
	c.ClusterCIDR = netip.MustParsePrefix("fd00:10:244::/48")
	return c
}

func traceV6(t *testing.T, r *Rules, src, dst, proto string, w want) {
	t.Helper()
	rs, err := iptables.ParseSave(RestoreText(r))
	if err != nil {
		t.Fatal(err)
	}
	d := netip.MustParseAddrPort(dst)
	tr := iptables.TracePacket(rs, iptables.TraceInput{
		Packet:     iptables.Packet{Src: netip.MustParseAddr(src), Dst: d.Addr(), DstPort: int(d.Port()), SrcPort: 40000, Protocol: proto},
		LocalAddrs: []netip.Addr{netip.MustParseAddr("fd00:50::10")},
	})
	if got := strings.Join(tr.Endpoints(), ","); got != strings.Join(w.endpoints, ",") {
		t.Errorf("%s -> %s: endpoints %v, want %v\n%s", src, dst, tr.Endpoints(), w.endpoints, tr.Text())
	}
	if got := tr.Verdicts(); len(got) != 1 || got[0] != w.verdict {
		t.Errorf("%s -> %s: verdicts %v, want %s", src, dst, got, w.verdict)
	}
	if w.masq != nil {
		all, none := masqueraded(tr)
		if *w.masq && !all || !*w.masq && !none {
			t.Errorf("%s -> %s: masquerade all=%v none=%v, want %v", src, dst, all, none, *w.masq)
		}
	}
}

func TestIPv6Rules(t *testing.T) {
	snap := loadSnapshot(t, "dualstack.yaml", "node-a")
	r := Render(snap, v6Config())
	eps := []string{"[fd00:10:244:1::70]:8080", "[fd00:10:244:2::70]:8080"}
	traceV6(t, r, "fd00:10:244:3::9", "[fd00:96::70:1]:80", "tcp", want{endpoints: eps, masq: no, verdict: "ACCEPT"})
	traceV6(t, r, "fd00:50::10", "[fd00:96::70:1]:80", "tcp", want{endpoints: eps, masq: yes, verdict: "ACCEPT"})
	traceV6(t, r, "2001:db8:1::5", "[fd00:50::10]:30700", "tcp", want{endpoints: eps, masq: yes, verdict: "ACCEPT"})
	traceV6(t, r, "2001:db8:1::5", "[2001:db8::70]:80", "tcp", want{endpoints: eps, masq: yes, verdict: "ACCEPT"})
	traceV6(t, r, "fd00:10:244:3::9", "[fd00:96::70:1]:53", "udp", want{endpoints: []string{"[fd00:10:244:1::70]:5353", "[fd00:10:244:2::70]:5353"}, verdict: "ACCEPT"})
	traceV6(t, r, "fd00:10:244:3::9", "[fd00:96::70:2]:80", "tcp", want{verdict: "REJECT"})
	// NodePorts never answer on ::1, and there is no localnet guard in IPv6.
	traceV6(t, r, "::1", "[::1]:30700", "tcp", want{verdict: "ACCEPT"})
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
