package healthcheck

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"

	"k8s.io/klog/v2"
)

func freePort(t *testing.T) int32 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return int32(l.Addr().(*net.TCPAddr).Port)
}

type answer struct {
	status int
	weight string
	body   Response
}

func get(t *testing.T, port int32) answer {
	t.Helper()
	resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(int(port)) + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var a answer
	a.status = resp.StatusCode
	a.weight = resp.Header.Get("X-Load-Balancing-Endpoint-Weight")
	if err := json.Unmarshal(data, &a.body); err != nil {
		t.Fatalf("body is not JSON: %v: %s", err, data)
	}
	return a
}

func TestHealthCheckAnswers(t *testing.T) {
	var healthy atomic.Bool
	healthy.Store(true)
	s := NewServices(klog.Background(), func() []string { return []string{"127.0.0.1"} }, healthy.Load, nil)
	defer s.Close()
	port := freePort(t)
	s.Sync(map[string]int32{"shop/web": port}, map[string]int{"shop/web": 2})

	a := get(t, port)
	if a.status != 200 || a.weight != "2" || a.body.LocalEndpoints != 2 || !a.body.ServiceProxyHealthy ||
		a.body.Service.Namespace != "shop" || a.body.Service.Name != "web" {
		t.Errorf("with 2 local endpoints: %+v", a)
	}
	s.Sync(map[string]int32{"shop/web": port}, map[string]int{"shop/web": 0})
	if a := get(t, port); a.status != 503 || a.weight != "0" {
		t.Errorf("without local endpoints: %+v", a)
	}
	s.Sync(map[string]int32{"shop/web": port}, map[string]int{"shop/web": 1})
	healthy.Store(false)
	if a := get(t, port); a.status != 503 || a.body.ServiceProxyHealthy {
		t.Errorf("with an unhealthy proxy: %+v", a)
	}
	// The Service goes away: its port closes.
	s.Sync(nil, nil)
	if _, err := http.Get("http://127.0.0.1:" + strconv.Itoa(int(port)) + "/"); err == nil {
		t.Error("port still open after the Service went away")
	}
}

func TestHealthCheckPortInUseIsReportedNotFatal(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := int32(busy.Addr().(*net.TCPAddr).Port)
	var reports atomic.Int32
	s := NewServices(klog.Background(), func() []string { return []string{"127.0.0.1"} }, func() bool { return true }, func(string, int32, error) { reports.Add(1) })
	defer s.Close()
	ok := freePort(t)
	ports := map[string]int32{"a/busy": busyPort, "a/fine": ok}
	s.Sync(ports, map[string]int{"a/fine": 1})
	s.Sync(ports, map[string]int{"a/fine": 1})
	if reports.Load() != 1 {
		t.Errorf("port conflict reported %d times, want once", reports.Load())
	}
	if a := get(t, ok); a.status != 200 {
		t.Errorf("the other Service's port does not answer: %+v", a)
	}
	// The port frees up: the next sync opens it.
	busy.Close()
	s.Sync(ports, map[string]int{"a/fine": 1, "a/busy": 1})
	if a := get(t, busyPort); a.status != 200 {
		t.Errorf("freed port not opened: %+v", a)
	}
}

// With --nodeport-addresses=primary the servers listen on the node's
// primary IPs only; before the Node (and so its primary IP) is known none
// is opened, rather than every address, and the next sync opens it.
func TestHealthCheckWaitsForTheAddresses(t *testing.T) {
	var addrs atomic.Value
	addrs.Store([]string{})
	s := NewServices(klog.Background(), func() []string { return addrs.Load().([]string) }, func() bool { return true }, nil)
	defer s.Close()
	port := freePort(t)
	ports := map[string]int32{"a/svc": port}
	s.Sync(ports, map[string]int{"a/svc": 1})
	if len(s.Ports()) != 0 {
		t.Fatalf("a server opened with no address known: %v", s.Ports())
	}
	if c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))); err == nil {
		c.Close()
		t.Fatal("the port answers on loopback although no address was allowed")
	}
	addrs.Store([]string{"127.0.0.1"})
	s.Sync(ports, map[string]int{"a/svc": 1})
	if a := get(t, port); a.status != 200 {
		t.Errorf("not opened once the address is known: %+v", a)
	}
}
