package host

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestEnsure(t *testing.T) {
	root := t.TempDir()
	path := filepath.Join(root, "net/ipv4/conf/all/route_localnet")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := ProcSysctl{Root: root}
	changed, err := Ensure(s, RouteLocalnet, "1")
	if err != nil || !changed {
		t.Fatalf("Ensure = %v, %v", changed, err)
	}
	if v, _ := s.Get(RouteLocalnet); v != "1" {
		t.Errorf("value = %q", v)
	}
	if changed, err := Ensure(s, RouteLocalnet, "1"); changed || err != nil {
		t.Errorf("second Ensure = %v, %v; want no change", changed, err)
	}
	ro := &FakeSysctl{Values: map[string]string{RouteLocalnet: "0"}, ReadOnly: true}
	if _, err := Ensure(ro, RouteLocalnet, "1"); err == nil {
		t.Error("read-only sysctl accepted a write")
	}
}

func TestInterfaceAddrsIncludesLoopback(t *testing.T) {
	addrs, err := InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if a.IsLoopback() {
			return
		}
	}
	t.Errorf("no loopback address among %v", addrs)
}

func TestApplyConntrack(t *testing.T) {
	sys := &FakeSysctl{Values: map[string]string{ConntrackMax: "65536", ConntrackTCPEstablished: "432000"}}
	params := &FakeSysctl{Values: map[string]string{"hashsize": "16384"}}
	c := ConntrackConfig{MaxPerCore: 32768, Min: 131072, TCPEstablished: 24 * time.Hour, TCPCloseWait: time.Hour, TCPBeLiberal: true}
	if err := ApplyConntrack(sys, params, c, 2); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{ConntrackMax: "131072", ConntrackTCPEstablished: "86400", ConntrackTCPCloseWait: "3600", ConntrackTCPBeLiberal: "1"} {
		if got := sys.Values[name]; got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	if params.Values["hashsize"] != "32768" {
		t.Errorf("hashsize = %q, want 32768", params.Values["hashsize"])
	}
	if _, ok := sys.Values[ConntrackUDPTimeout]; ok {
		t.Error("a zero UDP timeout was written")
	}
	if ConntrackMaxFor(ConntrackConfig{MaxPerCore: 32768, Min: 1}, 8) != 262144 || ConntrackMaxFor(ConntrackConfig{}, 8) != 0 {
		t.Error("ConntrackMaxFor")
	}
	// Read-only (a network namespace): every setting is reported, none fatal.
	ro := &FakeSysctl{ReadOnly: true}
	if err := ApplyConntrack(ro, params, c, 2); err == nil {
		t.Error("read-only sysctls reported no error")
	}
}

func TestSetOOMScoreAdj(t *testing.T) {
	path := filepath.Join(t.TempDir(), "oom_score_adj")
	if err := SetOOMScoreAdjAt(path, -999); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "-999" {
		t.Errorf("wrote %q", b)
	}
	if err := SetOOMScoreAdjAt(path, 1001); err == nil {
		t.Error("a value out of range must be refused")
	}
	if err := SetOOMScoreAdjAt(filepath.Join(t.TempDir(), "missing", "x"), 0); err == nil {
		t.Error("an unwritable file must be an error (the daemon logs it and goes on)")
	}
}
