package iptables

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

func saveSeeds(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.save")
	for _, file := range files {
		if data, err := os.ReadFile(file); err == nil {
			f.Add(string(data))
		}
	}
	f.Add("*nat\n:A - [0:0]\n-A A -m statistic --mode random --probability 0.5 -j A\nCOMMIT\n")
	f.Add("*filter\n-A INPUT ! -s 1.2.3.4 -p tcp -m multiport --dports 1:3,80 -j REJECT\nCOMMIT\n")
}

// FuzzParseSave: arbitrary input never panics the parser; whatever parses
// saves to text that parses again to the same ruleset.
func FuzzParseSave(f *testing.F) {
	saveSeeds(f)
	f.Fuzz(func(t *testing.T, text string) {
		rs, err := ParseSave(text)
		if err != nil {
			return
		}
		again, err := ParseSave(rs.Save())
		if err != nil {
			t.Fatalf("saved text does not parse again: %v\n%s", err, rs.Save())
		}
		if again.Save() != rs.Save() {
			t.Fatalf("round trip changed the ruleset")
		}
	})
}

// FuzzTrace: tracing any packet through any parsable ruleset never panics
// and always ends in a verdict, loops included.
func FuzzTrace(f *testing.F) {
	saveSeeds(f)
	f.Fuzz(func(t *testing.T, text string) {
		rs, err := ParseSave(text)
		if err != nil {
			return
		}
		for _, dst := range []string{"10.96.0.10", "192.168.50.10", "127.0.0.1", "fd00::1"} {
			tr := TracePacket(rs, TraceInput{
				Packet:     Packet{Src: netip.MustParseAddr("10.244.1.5"), Dst: netip.MustParseAddr(dst), DstPort: 80, Protocol: "tcp"},
				LocalAddrs: []netip.Addr{netip.MustParseAddr("192.168.50.10")},
			})
			for _, o := range tr.Outcomes {
				if o.Verdict == "" {
					t.Fatalf("an outcome without a verdict: %+v", o)
				}
			}
			_ = tr.Text()
		}
	})
}
