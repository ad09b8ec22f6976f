package watch

import (
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/switchyard-proxy/switchyard/pkg/proxier"
)

// parsedService is a Service as the Service informer caches it: its
// identity and its ports already read into the model through the tracker's
// filter, which the tracker keeps as they are. The API object (spec,
// status, labels) is not held beside them.
type parsedService struct {
	// ObjectMeta keeps namespace, name, UID and resource version.
	metav1.ObjectMeta
	parsedKind
	ports []*proxier.ServicePort
	// skip says why the Service is not proxied ("" when it is).
	skip string
	// err lists what was dropped as invalid.
	err error
}

// parseService reads a Service into the form the informer keeps.
func parseService(f proxier.Filter, svc *v1.Service) *parsedService {
	p := &parsedService{ObjectMeta: identity(&svc.ObjectMeta)}
	if p.skip = f.SkipReason(svc); p.skip == "" {
		p.ports, p.err = f.ServicePorts(svc)
	}
	return p
}

// ref is the Service an Event about this one is recorded on.
func (p *parsedService) ref() *v1.Service {
	return &v1.Service{ObjectMeta: identity(&p.ObjectMeta)}
}

// DeepCopyObject makes a parsedService a runtime.Object. The ports are
// never modified once parsed, so a copy shares them.
func (p *parsedService) DeepCopyObject() runtime.Object {
	c := *p
	p.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	return &c
}
