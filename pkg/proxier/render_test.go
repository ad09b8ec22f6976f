package proxier

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
	"github.com/switchyard-proxy/switchyard/pkg/manifest"
)

var update = flag.Bool("update", false, "rewrite golden files")

var testCIDR = netip.MustParsePrefix("10.244.0.0/16")

func defaultConfig() RenderConfig {
	return RenderConfig{Family: v1.IPv4Protocol, ClusterCIDR: testCIDR, MasqueradeBit: 14, LocalhostNodePorts: true}
}

// loadSnapshot builds a snapshot from a testdata objects file, as render does.
func loadSnapshot(t *testing.T, file, node string) *Snapshot {
	t.Helper()
	objs, err := manifest.Load([]string{filepath.Join("testdata", "objects", file)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	snap, warnings := SnapshotFromObjects(Filter{}, node, objs.Services, objs.Slices, objs.Nodes)
	if len(warnings) > 0 {
		t.Fatalf("warnings: %v", warnings)
	}
	return snap
}

func TestGolden(t *testing.T) {
	cases := []struct {
		name string
		file string
		cfg  func(*RenderConfig)
	}{
		{name: "basic", file: "basic.yaml"},
		{name: "basic-masquerade-all", file: "basic.yaml", cfg: func(c *RenderConfig) { c.MasqueradeAll = true }},
		{name: "basic-no-cluster-cidr", file: "basic.yaml", cfg: func(c *RenderConfig) { c.ClusterCIDR = netip.Prefix{} }},
		{name: "basic-masquerade-bit-3", file: "basic.yaml", cfg: func(c *RenderConfig) { c.MasqueradeBit = 3 }},
		{name: "basic-tcp-be-liberal", file: "basic.yaml", cfg: func(c *RenderConfig) { c.ConntrackTCPBeLiberal = true }},
		{name: "multiport", file: "multiport.yaml"},
		{name: "affinity", file: "affinity.yaml"},
		{name: "terminating", file: "terminating.yaml"},
		{name: "skipped", file: "skipped.yaml"},
		{name: "list", file: "list.yaml"},
		{name: "external", file: "external.yaml"},
		{name: "internal", file: "internal.yaml"},
		{name: "dualstack-ipv4", file: "dualstack.yaml"},
		{name: "dualstack-ipv6", file: "dualstack.yaml", cfg: func(c *RenderConfig) { *c = v6Config() }},
		{name: "internal-detect-bridge", file: "internal.yaml", cfg: func(c *RenderConfig) {
			c.DetectLocal = LocalDetector{Mode: DetectBridgeInterface, Interface: "cbr0"}
		}},
		{name: "external-nfacct", file: "external.yaml", cfg: func(c *RenderConfig) { c.NFAcctInvalid, c.NFAcctLocalhost = true, true }},
		{name: "external-nodeport-addresses", file: "external.yaml", cfg: func(c *RenderConfig) {
			c.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("192.168.50.0/24")}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := defaultConfig()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			got := RestoreText(Render(loadSnapshot(t, tc.file, "node-a"), cfg))
			// Whatever we render must be accepted by our own restore model.
			if _, err := iptables.ParseSave(got); err != nil {
				t.Fatalf("rendered text does not restore: %v", err)
			}
			path := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./pkg/proxier -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("rendered rules differ from %s (run with -update if intended):\n%s", path, lineDiff(string(want), got))
			}
		})
	}
}

// lineDiff shows lines only in want (-) and only in got (+).
func lineDiff(want, got string) string {
	w := map[string]int{}
	for _, l := range strings.Split(want, "\n") {
		w[l]++
	}
	g := map[string]int{}
	for _, l := range strings.Split(got, "\n") {
		g[l]++
	}
	var b strings.Builder
	for _, l := range strings.Split(want, "\n") {
		if g[l] == 0 {
			b.WriteString("- " + l + "\n")
		}
	}
	for _, l := range strings.Split(got, "\n") {
		if w[l] == 0 {
			b.WriteString("+ " + l + "\n")
		}
	}
	return b.String()
}

func TestChainNamesAreStable(t *testing.T) {
	n := ServicePortName{Namespace: "default", Name: "web", Port: "http", Protocol: v1.ProtocolTCP}
	// These names are part of the node's state across versions: changing
	// the hash would make every upgrade rewrite every chain.
	if got, want := ServiceChainName(n), "SWY-SVC-CDGGSHYLG3RE2FKL"; got != want {
		t.Errorf("ServiceChainName = %s, want %s", got, want)
	}
	ep := Endpoint{Addr: netip.MustParseAddr("10.244.1.5"), Port: 8080}
	if got, want := EndpointChainName(n, ep), "SWY-SEP-AFGSLHOD2HFNCBX4"; got != want {
		t.Errorf("EndpointChainName = %s, want %s", got, want)
	}
	udp := n
	udp.Protocol = v1.ProtocolUDP
	if ServiceChainName(udp) == ServiceChainName(n) {
		t.Error("TCP and UDP ports of the same name share a chain")
	}
	for _, name := range []string{ServiceChainName(n), EndpointChainName(n, ep)} {
		if len(name) > 28 {
			t.Errorf("chain name %s is longer than iptables allows (28)", name)
		}
	}
}

func TestRenderIsDeterministic(t *testing.T) {
	snap := loadSnapshot(t, "multiport.yaml", "node-a")
	a := RestoreText(Render(snap, defaultConfig()))
	for i := 0; i < 5; i++ {
		if b := RestoreText(Render(snap, defaultConfig())); a != b {
			t.Fatal("two renders of the same snapshot differ")
		}
	}
}

func TestIPv6Render(t *testing.T) {
	snap := NewSnapshot()
	n := ServicePortName{Namespace: "default", Name: "v6", Port: "http", Protocol: v1.ProtocolTCP}
	snap.Services[n] = &ServicePort{Name: n, Port: 80, ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.1"), netip.MustParseAddr("fd00:96::1")}}
	snap.Endpoints[n] = []Endpoint{
		{Addr: netip.MustParseAddr("10.244.0.5"), Port: 8080, Ready: true, Serving: true},
		{Addr: netip.MustParseAddr("fd00:244::5"), Port: 8080, Ready: true, Serving: true},
	}
	cfg := defaultConfig()
	cfg.Family = v1.IPv6Protocol
	cfg.ClusterCIDR = netip.MustParsePrefix("fd00:244::/64")
	text := RestoreText(Render(snap, cfg))
	for _, want := range []string{"-d fd00:96::1/128", "--to-destination [fd00:244::5]:8080", "! -s fd00:244::/64"} {
		if !strings.Contains(text, want) {
			t.Errorf("IPv6 rules lack %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "10.244.0.5") || strings.Contains(text, "10.96.0.1/") {
		t.Errorf("IPv6 rules contain IPv4 addresses:\n%s", text)
	}
}

func TestBaseJumpsInRenderOrder(t *testing.T) {
	rs, err := iptables.ParseSave(RestoreText(Render(NewSnapshot(), defaultConfig())))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rs.Tables["filter"].Chains["FORWARD"].Rules {
		got = append(got, r.Target)
	}
	want := []string{ChainProxyFirewall, ChainForward, ChainServices, ChainExternalServices}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("filter FORWARD jumps = %v, want %v", got, want)
	}
}
