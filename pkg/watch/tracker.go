// Package watch owns the informers on Services, EndpointSlices and the
// proxy's own Node, and the change tracker that turns their events into the
// proxier's model. Event handlers only convert, record the change keyed by
// namespace/name, and announce it (Tracker.Changes); they never touch the
// host.
package watch

import (
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/klog/v2"

	"github.com/switchyard-proxy/switchyard/pkg/metrics"
	"github.com/switchyard-proxy/switchyard/pkg/proxier"
)

// Reporter receives problems with individual objects (for Events).
type Reporter interface {
	Warn(obj any, reason, message string)
}

// Tracker holds the converted state of every watched object. It implements
// proxier.SnapshotSource.
type Tracker struct {
	filter   proxier.Filter
	nodeName string
	changes  chan struct{}
	logger   klog.Logger
	reporter Reporter

	mu sync.Mutex
	// services: namespace/name -> converted ports.
	services map[string][]*proxier.ServicePort
	// slices: service namespace/name -> its slices' endpoints per port.
	slices map[string][]proxier.NamedSlice
	// merged: service namespace/name -> endpoints merged across slices,
	// recomputed only when one of that Service's slices changes.
	merged map[string]proxier.PortList
	// sliceOwner remembers which Service a slice was filed under.
	sliceOwner map[string]string
	node       proxier.NodeInfo

	// Changes since the last snapshot, for metrics.
	svcChanges   map[string]bool
	sliceChanges map[string]bool
	triggers     []time.Time
	// sorted is the last snapshot's sorted Service port names, reused
	// while no Service changes.
	sorted []proxier.ServicePortName
	// last is the last snapshot, handed out again (its maps shared) while
	// nothing changed: each IP family's loop takes one per change, and at
	// 10,000 Services its maps weigh 2.5 MB.
	last *proxier.Snapshot
}

// NewTracker returns an empty tracker. reporter, when not nil, gets an
// Event for every invalid object.
func NewTracker(logger klog.Logger, filter proxier.Filter, nodeName string, reporter Reporter) *Tracker {
	return &Tracker{
		filter: filter, nodeName: nodeName, changes: make(chan struct{}, 1), logger: logger, reporter: reporter,
		services:   map[string][]*proxier.ServicePort{},
		slices:     map[string][]proxier.NamedSlice{},
		merged:     map[string]proxier.PortList{},
		sliceOwner: map[string]string{},
		node:       proxier.NodeInfo{Name: nodeName},
		svcChanges: map[string]bool{}, sliceChanges: map[string]bool{},
	}
}

// TriggerTimeAnnotation is set by the EndpointSlice controller to when the
// change that produced a slice was triggered.
const TriggerTimeAnnotation = "endpoints.kubernetes.io/last-change-trigger-time"

func (t *Tracker) serviceChangedLocked(key string) {
	t.last = nil
	t.svcChanges[key] = true
	metrics.ServiceChangesTotal.Inc()
	metrics.ServiceChangesPending.Set(float64(len(t.svcChanges)))
}

func (t *Tracker) sliceChangedLocked(key string, annotations map[string]string) {
	t.last = nil
	t.sliceChanges[key] = true
	metrics.EndpointChangesTotal.Inc()
	metrics.EndpointChangesPending.Set(float64(len(t.sliceChanges)))
	if v, ok := annotations[TriggerTimeAnnotation]; ok {
		if ts, err := time.Parse(time.RFC3339Nano, v); err == nil {
			t.triggers = append(t.triggers, ts)
		}
	}
}

// Changes receives a value after recorded changes: changes made while one
// is waiting collapse into it. The sync loop takes a snapshot in answer.
func (t *Tracker) Changes() <-chan struct{} { return t.changes }

func (t *Tracker) changed() {
	select {
	case t.changes <- struct{}{}:
	default:
	}
}

func (t *Tracker) warn(obj any, reason string, err error) {
	t.logger.Error(err, "Ignoring invalid part of object", "reason", reason)
	if t.reporter != nil {
		t.reporter.Warn(obj, reason, err.Error())
	}
}

// UpdateService records a Service's current state (add or update).
func (t *Tracker) UpdateService(svc *v1.Service) {
	t.updateParsedService(parseService(t.filter, svc))
}

// updateParsedService records a Service as the informer keeps it.
func (t *Tracker) updateParsedService(p *parsedService) {
	key := p.Namespace + "/" + p.Name
	if p.err != nil {
		t.warn(p.ref(), "InvalidService", p.err)
	}
	if p.skip != "" {
		t.logger.V(4).Info("Skipping Service", "service", klog.KObj(p), "reason", p.skip)
	}
	t.mu.Lock()
	if len(p.ports) == 0 {
		delete(t.services, key)
	} else {
		t.services[key] = p.ports
	}
	t.serviceChangedLocked(key)
	t.mu.Unlock()
	t.changed()
}

// DeleteService forgets a Service.
func (t *Tracker) DeleteService(namespace, name string) {
	t.mu.Lock()
	delete(t.services, namespace+"/"+name)
	t.serviceChangedLocked(namespace + "/" + name)
	t.mu.Unlock()
	t.changed()
}

// UpdateSlice records an EndpointSlice's current state (add or update).
func (t *Tracker) UpdateSlice(slice *discovery.EndpointSlice) {
	t.updateParsedSlice(parseSlice(slice))
}

// updateParsedSlice records an EndpointSlice as the informer keeps it.
func (t *Tracker) updateParsedSlice(p *parsedSlice) {
	sliceKey := p.Namespace + "/" + p.Name
	svcKey := p.service
	if p.err != nil {
		t.warn(p.ref(), "InvalidEndpointSlice", p.err)
	}
	if svcKey == "" {
		t.logger.V(4).Info("Ignoring EndpointSlice", "endpointSlice", klog.KObj(p), "reason", p.reason)
	}
	t.mu.Lock()
	if old, ok := t.sliceOwner[sliceKey]; ok && old != svcKey {
		t.removeSliceLocked(old, p.Name)
	}
	if svcKey != "" {
		t.slices[svcKey] = putSlice(t.slices[svcKey], proxier.NamedSlice{Name: p.Name, Ports: p.endpoints})
		t.sliceOwner[sliceKey] = svcKey
		t.merged[svcKey] = proxier.MergeSlices(t.slices[svcKey])
	} else {
		delete(t.sliceOwner, sliceKey)
	}
	t.sliceChangedLocked(sliceKey, p.Annotations)
	t.mu.Unlock()
	t.changed()
}

// DeleteSlice forgets an EndpointSlice.
func (t *Tracker) DeleteSlice(namespace, name string) {
	sliceKey := namespace + "/" + name
	t.mu.Lock()
	if owner, ok := t.sliceOwner[sliceKey]; ok {
		t.removeSliceLocked(owner, name)
		delete(t.sliceOwner, sliceKey)
	}
	t.sliceChangedLocked(sliceKey, nil)
	t.mu.Unlock()
	t.changed()
}

// putSlice replaces the slice of the same name in list, or adds it.
func putSlice(list []proxier.NamedSlice, s proxier.NamedSlice) []proxier.NamedSlice {
	for i := range list {
		if list[i].Name == s.Name {
			list[i] = s
			return list
		}
	}
	return append(list, s)
}

func (t *Tracker) removeSliceLocked(svcKey, sliceName string) {
	t.slices[svcKey] = slices.DeleteFunc(t.slices[svcKey], func(s proxier.NamedSlice) bool { return s.Name == sliceName })
	if len(t.slices[svcKey]) == 0 {
		delete(t.slices, svcKey)
		delete(t.merged, svcKey)
		return
	}
	t.merged[svcKey] = proxier.MergeSlices(t.slices[svcKey])
}

// UpdateNode records the proxy's own Node.
func (t *Tracker) UpdateNode(node *v1.Node) {
	if node.Name != t.nodeName {
		return
	}
	info := proxier.NodeInfoFrom(node)
	t.mu.Lock()
	t.node, t.last = info, nil
	t.mu.Unlock()
	t.changed()
}

// Node returns what is known of the proxy's own Node.
func (t *Tracker) Node() proxier.NodeInfo {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.node
}

// DeleteNode forgets the proxy's own Node; Services keep being served.
func (t *Tracker) DeleteNode(name string) {
	if name != t.nodeName {
		return
	}
	t.mu.Lock()
	t.node, t.last = proxier.NodeInfo{Name: t.nodeName}, nil
	t.mu.Unlock()
	t.changed()
}

// AwaitsEndpoints reports whether a Service changed since the last snapshot
// has no EndpointSlice yet: a new Service, whose slice usually follows
// within milliseconds (the sync loop waits briefly for it).
func (t *Tracker) AwaitsEndpoints() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for key := range t.svcChanges {
		if _, ok := t.services[key]; ok && len(t.slices[key]) == 0 {
			return true
		}
	}
	return false
}

// TakeSnapshot returns the current desired state and takes the pending
// changes with it: the change counts and trigger times start again from
// none. Neither its maps nor their values may be mutated: they are shared
// with later snapshots while nothing changes.
func (t *Tracker) TakeSnapshot() *proxier.Snapshot {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.last != nil {
		again := *t.last
		again.TriggerTimes = t.triggers
		t.triggers = nil
		return &again
	}
	snap := &proxier.Snapshot{
		Services:     make(map[proxier.ServicePortName]*proxier.ServicePort, len(t.services)),
		Endpoints:    make(map[proxier.ServicePortName][]proxier.Endpoint, len(t.services)),
		Node:         t.node,
		TriggerTimes: t.triggers,
	}
	t.triggers = nil
	servicesChanged := len(t.svcChanges) > 0
	clear(t.svcChanges)
	clear(t.sliceChanges)
	metrics.ServiceChangesPending.Set(0)
	metrics.EndpointChangesPending.Set(0)
	for key, ports := range t.services {
		merged := t.merged[key]
		for _, p := range ports {
			snap.Services[p.Name] = p
			if eps := merged.For(proxier.PortKey{Name: p.Name.Port, Protocol: p.Name.Protocol}); len(eps) > 0 {
				snap.Endpoints[p.Name] = eps
			}
		}
	}
	if servicesChanged || len(t.sorted) != len(snap.Services) {
		t.sorted = snap.SortedNames()
	}
	snap.SetSortedNames(t.sorted)
	t.last = snap
	again := *snap
	return &again
}
