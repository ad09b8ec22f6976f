package proxier

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
)

// flow is one packet through rendered rules and, in a table of flows
// (runFlows), the fate it must meet: as kube-proxy's runPacketFlowTests.
type flow struct {
	src   netip.Addr
	dst   string // "addr:port"
	proto string // tcp when empty
	iface string // the input interface, for interface-based local detection
	// local are the node's addresses besides its primary one.
	local []netip.Addr
	want  want
}

// want is the expected fate of a traced packet.
type want struct {
	endpoints []string // DNAT destinations (nil: none)
	masq      *bool    // nil: don't care
	verdict   string   // single verdict across outcomes
	why       string   // substring of the summary
}

var yes, no = ptrTo(true), ptrTo(false)

func ptrTo(b bool) *bool { return &b }

// The node's primary address per family, local to every traced packet.
var (
	nodeIP   = netip.MustParseAddr("192.168.50.10")
	nodeIPv6 = netip.MustParseAddr("fd00:50::10")
)

// traceRules traces one packet through r.
func traceRules(t *testing.T, r *Rules, f flow) *iptables.Trace {
	t.Helper()
	rs, err := iptables.ParseSave(RestoreText(r))
	if err != nil {
		t.Fatal(err)
	}
	return traceIn(rs, f)
}

// traceIn traces one packet through a ruleset: the one trace helper of the
// proxier's tests.
func traceIn(rs *iptables.Ruleset, f flow) *iptables.Trace {
	ap := netip.MustParseAddrPort(f.dst)
	node := nodeIP
	if ap.Addr().Is6() {
		node = nodeIPv6
	}
	return iptables.TracePacket(rs, iptables.TraceInput{
		Packet:     iptables.Packet{Src: f.src, Dst: ap.Addr(), DstPort: int(ap.Port()), SrcPort: 40000, Protocol: f.protocol(), InIface: f.iface},
		LocalAddrs: append([]netip.Addr{node}, f.local...),
	})
}

func (f flow) protocol() string {
	if f.proto == "" {
		return "tcp"
	}
	return f.proto
}

// runFlows traces every flow through r and checks its fate.
func runFlows(t *testing.T, r *Rules, flows []flow) {
	t.Helper()
	rs, err := iptables.ParseSave(RestoreText(r))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range flows {
		tr := traceIn(rs, f)
		where := f.src.String() + " -> " + f.protocol() + " " + f.dst
		w := f.want
		if got := tr.Endpoints(); !reflect.DeepEqual(got, w.endpoints) {
			t.Errorf("%s: endpoints %v, want %v\n%s", where, got, w.endpoints, tr.Text())
		}
		if got := tr.Verdicts(); !reflect.DeepEqual(got, []string{w.verdict}) {
			t.Errorf("%s: verdicts %v, want %s\n%s", where, got, w.verdict, tr.Text())
		}
		if w.masq != nil {
			all, none := masqueraded(tr)
			if *w.masq && !all || !*w.masq && !none {
				t.Errorf("%s: masquerade all=%v none=%v, want %v\n%s", where, all, none, *w.masq, tr.Text())
			}
		}
		if w.why != "" && !strings.Contains(tr.Summary(), w.why) {
			t.Errorf("%s: summary %q does not say %q", where, tr.Summary(), w.why)
		}
	}
}

// masqueraded says whether all and whether none of a trace's outcomes are
// masqueraded.
func masqueraded(tr *iptables.Trace) (all, none bool) {
	all, none = true, true
	for _, o := range tr.Outcomes {
		if o.Masquerade {
			none = false
		} else {
			all = false
		}
	}
	return all, none
}
