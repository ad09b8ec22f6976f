package watch

import (
	"reflect"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
	obj, err := stripTransform(full.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	s := obj.(*discovery.EndpointSlice)
	e := s.Endpoints[0]
	if e.TargetRef != nil || e.Hostname != nil || e.DeprecatedTopology != nil || len(s.OwnerReferences) != 0 || len(s.ManagedFields) != 0 {
		t.Errorf("not stripped: %+v", s)
	}
	if !reflect.DeepEqual(s.Annotations, map[string]string{TriggerTimeAnnotation: "2026-11-22T10:00:00Z"}) {
		t.Errorf("annotations = %v, want only the trigger time", s.Annotations)
	}
	got, err := proxier.SliceEndpoints(s)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("model from the stripped slice = %+v, want %+v", got, want)
	}
}
