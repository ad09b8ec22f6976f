package watch

import (
	"fmt"
	"math/rand"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/switchyard-proxy/switchyard/pkg/proxier"
)

type recordingReporter struct {
	reasons []string
	objs    []any
}

func (r *recordingReporter) Warn(obj any, reason, _ string) {
	r.reasons = append(r.reasons, reason)
	r.objs = append(r.objs, obj)
}

func svc(name string) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: v1.ServiceSpec{ClusterIP: "10.96.0.1", ClusterIPs: []string{"10.96.0.1"},
			Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}},
	}
}

func slice(name, service string, ips ...string) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: name, Labels: map[string]string{discovery.LabelServiceName: service}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	for _, ip := range ips {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{Addresses: []string{ip}})
	}
	return s
}

var web = proxier.ServicePortName{Namespace: "default", Name: "web", Port: "http", Protocol: v1.ProtocolTCP}

func TestTrackerMergesSlicesAndRequestsSyncs(t *testing.T) {
	rep := &recordingReporter{}
	tr := NewTracker(klog.Background(), proxier.Filter{}, "node-a", rep)
	// announced says whether a change was announced since the last call.
	announced := func() bool {
		select {
		case <-tr.Changes():
			return true
		default:
			return false
		}
	}
	if announced() {
		t.Error("a new tracker announces a change")
	}
	tr.UpdateSlice(slice("web-1", "web", "10.0.0.1", "10.0.0.2"))
	if !announced() {
		t.Error("a new slice was not announced")
	}
	if snap := tr.TakeSnapshot(); len(snap.Services) != 0 {
		t.Error("endpoints without a Service produced a Service")
	}
	tr.UpdateService(svc("web"))
	if !announced() {
		t.Error("a new Service was not announced")
	}
	tr.UpdateSlice(slice("web-2", "web", "10.0.0.2", "10.0.0.3"))
	if !announced() {
		t.Error("a second slice was not announced")
	}
	snap := tr.TakeSnapshot()
	if got := len(snap.Endpoints[web]); got != 3 {
		t.Errorf("merged endpoints = %d, want 3 (10.0.0.2 only once)", got)
	}

	tr.DeleteSlice("default", "web-1")
	if got := len(tr.TakeSnapshot().Endpoints[web]); got != 2 {
		t.Errorf("after deleting a slice: %d endpoints, want 2", got)
	}
	// A slice moved to another Service leaves the first.
	tr.UpdateSlice(slice("web-2", "other", "10.0.0.2"))
	if got := len(tr.TakeSnapshot().Endpoints[web]); got != 0 {
		t.Errorf("slice relabelled away still counted: %d", got)
	}
	tr.DeleteService("default", "web")
	if len(tr.TakeSnapshot().Services) != 0 {
		t.Error("deleted Service still present")
	}

	// Bad input is reported and the rest still works.
	bad := slice("web-3", "web", "10.0.0.9", "nope")
	tr.UpdateService(svc("web"))
	tr.UpdateSlice(bad)
	if got := len(tr.TakeSnapshot().Endpoints[web]); got != 1 {
		t.Errorf("valid endpoint of a partly bad slice lost: %d", got)
	}
	if len(rep.reasons) != 1 || rep.reasons[0] != "InvalidEndpointSlice" {
		t.Errorf("reported %v", rep.reasons)
	}
}

func TestTrackerNode(t *testing.T) {
	tr := NewTracker(klog.Background(), proxier.Filter{}, "node-a", nil)
	if tr.TakeSnapshot().Node.Known {
		t.Error("node known before it was seen")
	}
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{proxier.LabelZone: "z1"}},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.168.1.1"}, {Type: v1.NodeHostName, Address: "node-a"}}}}
	tr.UpdateNode(n)
	other := n.DeepCopy()
	other.Name = "node-b"
	other.Labels[proxier.LabelZone] = "z2"
	tr.UpdateNode(other)
	got := tr.TakeSnapshot().Node
	if !got.Known || got.Zone != "z1" || len(got.Addresses) != 1 {
		t.Errorf("node = %+v", got)
	}
	tr.DeleteNode("node-a")
	if tr.TakeSnapshot().Node.Known {
		t.Error("node still known after deletion")
	}
}

func TestEventsOncePerObjectPerProblem(t *testing.T) {
	rec := record.NewFakeRecorder(10)
	r := &EventReporter{recorder: rec, seen: map[string]bool{}}
	a, b := svc("a"), svc("b")
	r.Warn(a, "InvalidService", "bad externalIP")
	r.Warn(a, "InvalidService", "bad externalIP") // the same problem again
	r.Warn(a, "InvalidService", "bad LB IP")      // a different problem
	r.Warn(b, "InvalidService", "bad externalIP") // another object
	close(rec.Events)
	var got []string
	for e := range rec.Events {
		got = append(got, e)
	}
	if len(got) != 3 {
		t.Errorf("events = %v, want 3", got)
	}
}

func TestSlicePortsMatchingNoServicePortAreIgnored(t *testing.T) {
	tr := NewTracker(klog.Background(), proxier.Filter{}, "node-a", nil)
	tr.UpdateService(svc("web"))
	s := slice("web-1", "web", "10.0.0.1")
	s.Ports[0].Name = ptr.To("not-http")
	tr.UpdateSlice(s)
	snap := tr.TakeSnapshot()
	if len(snap.Endpoints[web]) != 0 {
		t.Errorf("endpoints of a port name the Service lacks were used: %v", snap.Endpoints[web])
	}
	if len(snap.Services) != 1 {
		t.Errorf("the Service itself went missing")
	}
	// And it renders: no endpoints, so the Service rejects.
	text := proxier.RestoreText(proxier.Render(snap, proxier.RenderConfig{Family: v1.IPv4Protocol, MasqueradeBit: 14}))
	if !strings.Contains(text, "default/web:http has no endpoints") {
		t.Errorf("rules:\n%s", text)
	}
}

// The snapshot's sorted names are reused while only endpoints change, and
// are right again after Services come and go (even at the same count).
func TestSnapshotSortedNamesFollowServiceChanges(t *testing.T) {
	tr := NewTracker(klog.Background(), proxier.Filter{}, "node-a", nil)
	for i := range 3 {
		svc, sl := benchObjects(i, 2)
		tr.UpdateService(svc)
		tr.UpdateSlice(sl)
	}
	check := func(snap *proxier.Snapshot) []proxier.ServicePortName {
		t.Helper()
		got := snap.SortedNames()
		fresh := *snap
		fresh.SetSortedNames(nil)
		if want := fresh.SortedNames(); !reflect.DeepEqual(got, want) {
			t.Fatalf("sorted names %v, want %v", got, want)
		}
		return got
	}
	first := check(tr.TakeSnapshot())
	_, sl := benchObjects(1, 1)
	tr.UpdateSlice(sl)
	if again := check(tr.TakeSnapshot()); &again[0] != &first[0] {
		t.Error("an endpoint change sorted the names again")
	}
	tr.DeleteService("bench", "svc-00000")
	svc, _ := benchObjects(7, 0)
	tr.UpdateService(svc)
	if names := check(tr.TakeSnapshot()); names[len(names)-1].Name != "svc-00007" {
		t.Errorf("names after replacing a Service: %v", names)
	}
}

func TestTrackerKnowsWhenAServiceAwaitsItsSlice(t *testing.T) {
	tr := NewTracker(klog.Background(), proxier.Filter{}, "node-a", nil)
	if tr.AwaitsEndpoints() {
		t.Error("an empty tracker awaits endpoints")
	}
	tr.UpdateService(svc("web"))
	if !tr.AwaitsEndpoints() {
		t.Error("a new Service without a slice does not await one")
	}
	tr.UpdateSlice(slice("web-1", "web", "10.0.0.1"))
	if tr.AwaitsEndpoints() {
		t.Error("still awaiting after the Service's slice came")
	}
	tr.TakeSnapshot()
	tr.UpdateService(svc("lonely"))
	tr.TakeSnapshot()
	if tr.AwaitsEndpoints() {
		t.Error("a Service already synced without a slice is still awaited")
	}
	// A change to a Service that has its slice awaits nothing.
	tr.UpdateService(svc("web"))
	if tr.AwaitsEndpoints() {
		t.Error("an update of a Service with a slice awaits endpoints")
	}
}

// While nothing changes, each family's snapshot shares the maps of the one
// before (no 10,000-entry maps rebuilt per family and sync), without the
// trigger times the first one took; a change gives new maps.
func TestSnapshotsShareMapsUntilAChange(t *testing.T) {
	tr := NewTracker(klog.Background(), proxier.Filter{}, "node-a", nil)
	tr.UpdateService(svc("web"))
	sl := slice("web-1", "web", "10.0.0.1")
	sl.Annotations = map[string]string{TriggerTimeAnnotation: time.Now().Format(time.RFC3339Nano)}
	tr.UpdateSlice(sl)
	first, second := tr.TakeSnapshot(), tr.TakeSnapshot()
	if reflect.ValueOf(first.Services).Pointer() != reflect.ValueOf(second.Services).Pointer() {
		t.Error("a snapshot with nothing changed built its maps again")
	}
	if len(first.TriggerTimes) != 1 || len(second.TriggerTimes) != 0 {
		t.Errorf("trigger times %v then %v; want one, then none", first.TriggerTimes, second.TriggerTimes)
	}
	second.HostAddrs = []netip.Addr{netip.MustParseAddr("192.0.2.1")}
	if len(tr.TakeSnapshot().HostAddrs) != 0 {
		t.Error("a snapshot's own fields leak into the next")
	}
	tr.UpdateSlice(slice("web-1", "web", "10.0.0.1", "10.0.0.2"))
	third := tr.TakeSnapshot()
	if reflect.ValueOf(third.Endpoints).Pointer() == reflect.ValueOf(first.Endpoints).Pointer() || len(third.Endpoints[web]) != 2 {
		t.Errorf("after a change: %d endpoints in shared maps", len(third.Endpoints[web]))
	}
}

// The tracker builds each snapshot from the last one, remaking only the
// changed Services' entries. Over a random run of Service, slice and Node
// changes, every snapshot must equal one built from scratch, its sorted
// view must match its maps, and rendering the snapshots one after the
// other (each reusing the last render) must give what a fresh render of
// the from-scratch snapshot gives.
func TestPatchedSnapshotsEqualFreshOnes(t *testing.T) {
	const services = 120
	inc := NewTracker(klog.Background(), proxier.Filter{}, "node-a", nil)
	ref := NewTracker(klog.Background(), proxier.Filter{}, "node-a", nil)
	both := func(f func(*Tracker)) { f(inc); f(ref) }
	for i := range services {
		svc, sl := benchObjects(i, 3)
		both(func(tr *Tracker) { tr.UpdateService(svc); tr.UpdateSlice(sl) })
	}
	cfg := proxier.RenderConfig{Family: v1.IPv4Protocol, MasqueradeBit: 14}
	var r proxier.Renderer
	rng := rand.New(rand.NewSource(7))
	patched := 0
	for step := range 400 {
		for range 1 + rng.Intn(3) {
			i := rng.Intn(services + 20) // some Services come and go
			svc, sl := benchObjects(i, rng.Intn(5))
			switch op := rng.Intn(10); {
			case op < 5:
				both(func(tr *Tracker) { tr.UpdateSlice(sl) })
			case op < 6:
				both(func(tr *Tracker) { tr.DeleteSlice(sl.Namespace, sl.Name) })
			case op < 7:
				both(func(tr *Tracker) { tr.DeleteService(svc.Namespace, svc.Name) })
			case op < 8:
				svc.Spec.Ports = append(svc.Spec.Ports, v1.ServicePort{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP})
				both(func(tr *Tracker) { tr.UpdateService(svc) })
			case op < 9:
				both(func(tr *Tracker) { tr.UpdateService(svc); tr.UpdateSlice(sl) })
			default:
				node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{"step": fmt.Sprint(step)}}}
				both(func(tr *Tracker) { tr.UpdateNode(node) })
			}
		}
		if inc.built != nil && len(inc.dirty)*8 <= len(inc.services) {
			patched++
		}
		ref.built = nil // always from scratch
		got, want := inc.TakeSnapshot(), ref.TakeSnapshot()
		if !reflect.DeepEqual(got.Services, want.Services) || !reflect.DeepEqual(got.Endpoints, want.Endpoints) {
			t.Fatalf("step %d: the patched snapshot differs from one built from scratch", step)
		}
		fresh := *want
		fresh.SetSortedNames(nil)
		if !reflect.DeepEqual(got.SortedNames(), fresh.SortedNames()) {
			t.Fatalf("step %d: sorted names %v, want %v", step, got.SortedNames(), fresh.SortedNames())
		}
		for i, n := range inc.sorted {
			if inc.svcList[i] != got.Services[n] || len(inc.epList[i]) != len(got.Endpoints[n]) ||
				len(inc.epList[i]) > 0 && &inc.epList[i][0] != &got.Endpoints[n][0] {
				t.Fatalf("step %d: the sorted view's entry %d (%v) is not the map's", step, i, n)
			}
		}
		if a, b := proxier.RestoreText(r.Render(got, cfg)), proxier.RestoreText(proxier.Render(&fresh, cfg)); a != b {
			t.Fatalf("step %d: the incremental render differs from a fresh one:\n%s\nwant:\n%s", step, a, b)
		}
	}
	if patched < 300 {
		t.Errorf("only %d of 400 snapshots were patched; the test does not cover the patching", patched)
	}
}
