package watch

import (
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/switchyard-proxy/switchyard/pkg/proxier"
)

// parsedSlice is an EndpointSlice as the EndpointSlice informer caches it:
// its identity, the Service it belongs to, and its endpoints already
// parsed into the model. The tracker keeps the same endpoint lists, so at
// 10,000 Services the 100,000 endpoints are held once (the API objects'
// copies were a quarter of the daemon's live heap).
type parsedSlice struct {
	// ObjectMeta keeps what the informer and the tracker read: namespace,
	// name, UID and resource version, and the trigger-time annotation.
	metav1.ObjectMeta
	parsedKind
	// service is the owning Service's "namespace/name"; "" when the slice
	// is ignored, for reason.
	service, reason string
	endpoints       proxier.PortList
	// err lists the endpoints and ports that were dropped as invalid.
	err error
}

// parseSlice reads an EndpointSlice into the form the informer keeps.
func parseSlice(slice *discovery.EndpointSlice) *parsedSlice {
	p := &parsedSlice{ObjectMeta: identity(&slice.ObjectMeta)}
	if v, ok := slice.Annotations[TriggerTimeAnnotation]; ok {
		p.Annotations = map[string]string{TriggerTimeAnnotation: v}
	}
	p.service, p.reason = proxier.SliceServiceName(slice)
	if p.service != "" {
		p.endpoints, p.err = proxier.SliceEndpoints(slice)
	}
	return p
}

// ref is the EndpointSlice an Event about this slice is recorded on.
func (p *parsedSlice) ref() *discovery.EndpointSlice {
	return &discovery.EndpointSlice{ObjectMeta: identity(&p.ObjectMeta)}
}

// DeepCopyObject makes a parsedSlice a runtime.Object, as cache tombstones
// and client-go's debugging aids expect. The endpoint lists are never
// modified once parsed, so a copy shares them.
func (p *parsedSlice) DeepCopyObject() runtime.Object {
	c := *p
	p.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	return &c
}

// parsedKind gives the parsed forms the kind of an object with no kind.
type parsedKind struct{}

func (parsedKind) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

// identity is the metadata a parsed form keeps of its object: namespace,
// name, UID, resource version.
func identity(m *metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: m.Namespace, Name: m.Name, UID: m.UID, ResourceVersion: m.ResourceVersion}
}
