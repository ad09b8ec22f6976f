package watch

import (
	"reflect"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/switchyard-proxy/switchyard/pkg/proxier"
)

// The informer transform drops what the model never reads, and the model
// built from a stripped object is the one built from the full object.
func TestStripTransformKeepsTheModel(t *testing.T) {
	full := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-abc", Labels: map[string]string{discovery.LabelServiceName: "web"},
			Annotations:     map[string]string{TriggerTimeAnnotation: "2026-11-22T10:00:00Z", "other": "x"},
			OwnerReferences: []metav1.OwnerReference{{Kind: "Service", Name: "web"}},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kcm"}}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
		Endpoints: []discovery.Endpoint{{
			Addresses:          []string{"10.244.1.5", "10.244.1.6"},
			Conditions:         discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
			Hostname:           ptr.To("web-0"),
			TargetRef:          &v1.ObjectReference{Kind: "Pod", Namespace: "ns", Name: "web-0", UID: "0b8b0e44-1111-2222-3333-444455556666"},
			NodeName:           ptr.To("node-a"),
			Zone:               ptr.To("zone-a"),
			DeprecatedTopology: map[string]string{"kubernetes.io/hostname": "node-a"},
			Hints:              &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: "zone-a"}}},
		}},
	}
	want, err := proxier.SliceEndpoints(full)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := newTransform(proxier.Filter{})(full.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	p, ok := obj.(*parsedSlice)
	if !ok {
		t.Fatalf("transformed EndpointSlice is a %T, want the parsed form", obj)
	}
	if p.Namespace != "ns" || p.Name != "web-abc" || p.service != "ns/web" || p.err != nil {
		t.Errorf("parsed slice %s/%s of %q (err %v), want ns/web-abc of ns/web", p.Namespace, p.Name, p.service, p.err)
	}
	if len(p.Labels) != 0 || len(p.OwnerReferences) != 0 || len(p.ManagedFields) != 0 {
		t.Errorf("metadata not stripped: %+v", p.ObjectMeta)
	}
	if !reflect.DeepEqual(p.Annotations, map[string]string{TriggerTimeAnnotation: "2026-11-22T10:00:00Z"}) {
		t.Errorf("annotations = %v, want only the trigger time", p.Annotations)
	}
	if !reflect.DeepEqual(p.endpoints, want) {
		t.Errorf("model from the parsed slice = %+v, want %+v", p.endpoints, want)
	}
	// The informer may hand the transform what it already transformed.
	if again, _ := newTransform(proxier.Filter{})(p); again != p {
		t.Errorf("a parsed slice transformed again became %+v", again)
	}

	// An invalid endpoint: the valid ones are kept, the problem is carried
	// to the tracker, which reports it on the EndpointSlice.
	bad := full.DeepCopy()
	bad.Endpoints = append(bad.Endpoints, discovery.Endpoint{Addresses: []string{"not-an-ip"}})
	obj, _ = newTransform(proxier.Filter{})(bad)
	p = obj.(*parsedSlice)
	if p.err == nil || !strings.Contains(p.err.Error(), "not-an-ip") || !reflect.DeepEqual(p.endpoints, want) {
		t.Errorf("invalid endpoint: err %v, endpoints %+v; want the error and the valid endpoints", p.err, p.endpoints)
	}
	rep := &recordingReporter{}
	tr := NewTracker(klog.Background(), proxier.Filter{}, "node-a", rep)
	tr.updateParsedSlice(p)
	if len(rep.objs) != 1 || rep.reasons[0] != "InvalidEndpointSlice" {
		t.Fatalf("reported %v, want one InvalidEndpointSlice", rep.reasons)
	}
	if ref, ok := rep.objs[0].(*discovery.EndpointSlice); !ok || ref.Namespace != "ns" || ref.Name != "web-abc" {
		t.Errorf("the Event is on %#v, want EndpointSlice ns/web-abc", rep.objs[0])
	}

	// A slice of no Service is kept with its reason, without endpoints.
	orphan := full.DeepCopy()
	orphan.Labels = nil
	obj, _ = newTransform(proxier.Filter{})(orphan)
	if p := obj.(*parsedSlice); p.service != "" || p.reason == "" || p.endpoints != nil {
		t.Errorf("slice without a Service label parsed as %+v", p)
	}
}

// A parsed slice deleted while the watch was down reaches the tracker as a
// tombstone holding the cached (parsed) form, keyed as the API object was.
func TestParsedSliceTombstoneDeletes(t *testing.T) {
	tr := NewTracker(klog.Background(), proxier.Filter{}, "node-a", nil)
	tr.UpdateService(svc("web"))
	obj, _ := newTransform(proxier.Filter{})(slice("web-1", "web", "10.0.0.1"))
	h := sliceHandler(tr)
	h.OnAdd(obj, true)
	if n := len(tr.TakeSnapshot().Endpoints[web]); n != 1 {
		t.Fatalf("%d endpoints after the add, want 1", n)
	}
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil || key != "default/web-1" {
		t.Fatalf("informer key of a parsed slice = %q (%v), want default/web-1", key, err)
	}
	h.OnDelete(cache.DeletedFinalStateUnknown{Key: key, Obj: obj})
	if n := len(tr.TakeSnapshot().Endpoints[web]); n != 0 {
		t.Errorf("%d endpoints after the tombstone, want none", n)
	}
}

// A Service is kept as its ports, read through the tracker's filter: the
// model is the one the API object gives, bad fields still get their Event,
// and a Service that is not proxied keeps its reason and no ports.
func TestServiceTransformKeepsTheModel(t *testing.T) {
	full := svc("web")
	full.Labels = map[string]string{"app": "web"}
	full.Annotations = map[string]string{"note": "x"}
	full.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}
	full.Spec.Selector = map[string]string{"app": "web"}
	full.Spec.ExternalIPs = []string{"192.0.2.10"}
	want, err := proxier.Filter{}.ServicePorts(full)
	if err != nil {
		t.Fatal(err)
	}
	transform := newTransform(proxier.Filter{})
	obj, _ := transform(full.DeepCopy())
	p, ok := obj.(*parsedService)
	if !ok {
		t.Fatalf("transformed Service is a %T, want the parsed form", obj)
	}
	if p.Namespace != "default" || p.Name != "web" || p.skip != "" || p.err != nil || len(p.Labels)+len(p.Annotations)+len(p.ManagedFields) != 0 {
		t.Errorf("parsed Service %+v", p)
	}
	if !reflect.DeepEqual(p.ports, want) {
		t.Errorf("ports from the parsed Service = %+v, want %+v", p.ports, want)
	}
	if again, _ := transform(p); again != p {
		t.Errorf("a parsed Service transformed again became %+v", again)
	}

	bad := full.DeepCopy()
	bad.Spec.ExternalIPs = append(bad.Spec.ExternalIPs, "not-an-ip")
	obj, _ = transform(bad)
	rep := &recordingReporter{}
	tr := NewTracker(klog.Background(), proxier.Filter{}, "node-a", rep)
	tr.updateParsedService(obj.(*parsedService))
	if len(rep.objs) != 1 || rep.reasons[0] != "InvalidService" {
		t.Fatalf("reported %v, want one InvalidService", rep.reasons)
	}
	if ref, ok := rep.objs[0].(*v1.Service); !ok || ref.Namespace != "default" || ref.Name != "web" {
		t.Errorf("the Event is on %#v, want Service default/web", rep.objs[0])
	}
	if got := tr.TakeSnapshot().Services[web]; got == nil || len(got.ExternalIPs) != 1 {
		t.Errorf("the valid parts of an invalid Service: %+v, want its port with one external IP", got)
	}

	ext := full.DeepCopy()
	ext.Spec.Type, ext.Spec.ExternalName = v1.ServiceTypeExternalName, "example.com"
	obj, _ = transform(ext)
	if p := obj.(*parsedService); p.skip == "" || len(p.ports) != 0 {
		t.Errorf("ExternalName Service parsed as %+v, want skipped without ports", p)
	}

	// Deleted while the watch was down: the tombstone holds the parsed form.
	obj, _ = transform(full.DeepCopy())
	h := serviceHandler(tr)
	h.OnAdd(obj, true)
	h.OnDelete(cache.DeletedFinalStateUnknown{Key: "default/web", Obj: obj})
	if _, ok := tr.TakeSnapshot().Services[web]; ok {
		t.Error("the Service is still there after its tombstone")
	}
}
