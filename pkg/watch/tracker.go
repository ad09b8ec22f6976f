// Package watch owns the informers on Services, EndpointSlices and the
// proxy's own Node, and the change tracker that turns their events into the
// proxier's model. Event handlers only convert, record the change keyed by
// namespace/name, and announce it (Tracker.Changes); they never touch the
// host.
package watch

import (
	"maps"
	"slices"
	"strings"
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
	// dirty: the Services (namespace/name) whose ports or endpoints may
	// have changed since the last snapshot built.
	dirty map[string]bool
	// built is the last snapshot built; the next copies its maps and makes
	// only the dirty Services' entries again.
	built *proxier.Snapshot
	// sorted is built's sorted Service port names, the same slice while no
	// Service port comes or goes; svcList and epList are aligned with it.
	sorted  []proxier.ServicePortName
	svcList []*proxier.ServicePort
	epList  [][]proxier.Endpoint
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
		svcChanges: map[string]bool{}, sliceChanges: map[string]bool{}, dirty: map[string]bool{},
	}
}

// TriggerTimeAnnotation is set by the EndpointSlice controller to when the
// change that produced a slice was triggered.
const TriggerTimeAnnotation = "endpoints.kubernetes.io/last-change-trigger-time"

func (t *Tracker) serviceChangedLocked(key string) {
	t.last = nil
	t.dirty[key] = true
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
		t.dirty[svcKey] = true
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
	t.dirty[svcKey] = true
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
	var snap *proxier.Snapshot
	if t.built != nil && len(t.dirty)*8 <= len(t.services) {
		snap = t.patchLocked()
	} else {
		snap = t.buildLocked()
	}
	snap.Node, snap.TriggerTimes = t.node, t.triggers
	snap.SetSorted(t.sorted, t.svcList, t.epList)
	t.triggers = nil
	clear(t.svcChanges)
	clear(t.sliceChanges)
	clear(t.dirty)
	metrics.ServiceChangesPending.Set(0)
	metrics.EndpointChangesPending.Set(0)
	t.last, t.built = snap, snap
	again := *snap
	return &again
}

// portsLocked is what the snapshot holds for one Service: each port and,
// when it has any, its endpoints.
func (t *Tracker) portsLocked(key string, each func(*proxier.ServicePort, []proxier.Endpoint)) {
	merged := t.merged[key]
	for _, p := range t.services[key] {
		each(p, merged.For(proxier.PortKey{Name: p.Name.Port, Protocol: p.Name.Protocol}))
	}
}

// buildLocked makes a snapshot from every Service, with its sorted view.
func (t *Tracker) buildLocked() *proxier.Snapshot {
	snap := &proxier.Snapshot{
		Services:  make(map[proxier.ServicePortName]*proxier.ServicePort, len(t.services)),
		Endpoints: make(map[proxier.ServicePortName][]proxier.Endpoint, len(t.services)),
	}
	for key := range t.services {
		t.portsLocked(key, func(p *proxier.ServicePort, eps []proxier.Endpoint) {
			snap.Services[p.Name] = p
			if len(eps) > 0 {
				snap.Endpoints[p.Name] = eps
			}
		})
	}
	if len(t.svcChanges) > 0 || len(t.sorted) != len(snap.Services) {
		t.sorted = snap.SortedNames()
	}
	t.svcList = make([]*proxier.ServicePort, len(t.sorted))
	t.epList = make([][]proxier.Endpoint, len(t.sorted))
	for i, n := range t.sorted {
		t.svcList[i], t.epList[i] = snap.Services[n], snap.Endpoints[n]
	}
	return snap
}

// patchLocked makes the next snapshot from the last one built: its maps
// copied, and only the changed Services' entries made again. The sorted
// view is patched the same way, by position, without a map lookup per
// Service port; while no Service port comes or goes, the names are the very
// same slice, which tells the renderer that only the changed entries can
// differ.
func (t *Tracker) patchLocked() *proxier.Snapshot {
	snap := &proxier.Snapshot{Services: maps.Clone(t.built.Services), Endpoints: maps.Clone(t.built.Endpoints)}
	var touched []int // positions in t.sorted of the changed Services' old ports
	var added []proxier.ServicePortName
	for key := range t.dirty {
		lo, hi := rangeOf(t.sorted, key)
		for i := lo; i < hi; i++ {
			delete(snap.Services, t.sorted[i])
			delete(snap.Endpoints, t.sorted[i])
			touched = append(touched, i)
		}
		t.portsLocked(key, func(p *proxier.ServicePort, eps []proxier.Endpoint) {
			snap.Services[p.Name] = p
			if len(eps) > 0 {
				snap.Endpoints[p.Name] = eps
			}
			if !slices.Contains(t.sorted[lo:hi], p.Name) {
				added = append(added, p.Name)
			}
		})
	}
	slices.Sort(touched)
	gone := len(t.sorted) + len(added) - len(snap.Services) // old ports no longer there
	if len(added) == 0 && gone == 0 {
		svcs, eps := slices.Clone(t.svcList), slices.Clone(t.epList)
		for _, i := range touched {
			n := t.sorted[i]
			svcs[i], eps[i] = snap.Services[n], snap.Endpoints[n]
		}
		t.svcList, t.epList = svcs, eps
		return snap
	}
	slices.SortFunc(added, proxier.CompareNames)
	names := make([]proxier.ServicePortName, 0, len(snap.Services))
	svcs := make([]*proxier.ServicePort, 0, len(snap.Services))
	eps := make([][]proxier.Endpoint, 0, len(snap.Services))
	put := func(n proxier.ServicePortName) {
		if svc, ok := snap.Services[n]; ok {
			names, svcs, eps = append(names, n), append(svcs, svc), append(eps, snap.Endpoints[n])
		}
	}
	i, j := 0, 0
	for i < len(t.sorted) || j < len(added) {
		if j < len(added) && (i == len(t.sorted) || proxier.CompareNames(added[j], t.sorted[i]) < 0) {
			put(added[j])
			j++
			continue
		}
		if len(touched) > 0 && touched[0] == i {
			touched = touched[1:]
			put(t.sorted[i])
		} else {
			names, svcs, eps = append(names, t.sorted[i]), append(svcs, t.svcList[i]), append(eps, t.epList[i])
		}
		i++
	}
	t.sorted, t.svcList, t.epList = names, svcs, eps
	return snap
}

// rangeOf is where one Service's ports (key: namespace/name) are in a
// sorted name list: sorted[lo:hi].
func rangeOf(sorted []proxier.ServicePortName, key string) (lo, hi int) {
	ns, name, _ := strings.Cut(key, "/")
	lo, _ = slices.BinarySearchFunc(sorted, proxier.ServicePortName{Namespace: ns, Name: name}, proxier.CompareNames)
	hi = lo
	for hi < len(sorted) && sorted[hi].Namespace == ns && sorted[hi].Name == name {
		hi++
	}
	return lo, hi
}
