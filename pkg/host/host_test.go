package host

import (
	"os"
	"path/filepath"
	"testing"
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
