package watch

import (
	"context"
	"fmt"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/switchyard-proxy/switchyard/pkg/proxier"
)

// Watcher runs the informers that feed a Tracker.
type Watcher struct {
	tracker  *Tracker
	services cache.SharedIndexInformer
	slices   cache.SharedIndexInformer
	nodes    cache.SharedIndexInformer
	// handlers are the event handler registrations, for their HasSynced.
	handlers [3]cache.ResourceEventHandlerRegistration
	start    []func(<-chan struct{})
}

// newTransform returns the informers' transform. A Service and an
// EndpointSlice are kept parsed (parsedService, parsedSlice): the tracker
// keeps the very ports and endpoint lists the informer caches, so they are
// held once, and nothing else of the API objects is. The Node is stripped
// (stripTransform). Objects already transformed pass unchanged.
func newTransform(f proxier.Filter) cache.TransformFunc {
	return func(obj any) (any, error) {
		switch o := obj.(type) {
		case *parsedService, *parsedSlice:
			return obj, nil
		case *v1.Service:
			return parseService(f, o), nil
		case *discovery.EndpointSlice:
			return parseSlice(o), nil
		}
		return stripTransform(obj)
	}
}

// stripTransform drops what the model never reads from an object the
// informers keep whole (the Node): managed fields, annotations, owner
// references, and the Node's images and system information.
func stripTransform(obj any) (any, error) {
	if m, err := meta.Accessor(obj); err == nil {
		m.SetManagedFields(nil)
		m.SetOwnerReferences(nil)
		m.SetAnnotations(nil)
	}
	if o, ok := obj.(*v1.Node); ok {
		o.Status.Images = nil
		o.Status.NodeInfo = v1.NodeSystemInfo{}
		o.Status.VolumesAttached, o.Status.VolumesInUse = nil, nil
	}
	return obj, nil
}

// parsedHandler feeds the tracker from an informer whose transform keeps
// objects parsed (P).
func parsedHandler[P any](update func(P), del func(namespace, name string)) cache.ResourceEventHandlerFuncs {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { update(obj.(P)) },
		UpdateFunc: func(_, obj any) { update(obj.(P)) },
		DeleteFunc: func(obj any) {
			if ns, name, ok := deletedKey(obj); ok {
				del(ns, name)
			}
		},
	}
}

// sliceHandler feeds the tracker from the EndpointSlice informer.
func sliceHandler(t *Tracker) cache.ResourceEventHandlerFuncs {
	return parsedHandler(t.updateParsedSlice, t.DeleteSlice)
}

// serviceHandler feeds the tracker from the Service informer.
func serviceHandler(t *Tracker) cache.ResourceEventHandlerFuncs {
	return parsedHandler(t.updateParsedService, t.DeleteService)
}

// NewWatcher sets up informers on Services (filtered by the proxy-name
// label), EndpointSlices (headless ones excluded) and the Node called
// nodeName, all feeding tracker.
func NewWatcher(client kubernetes.Interface, tracker *Tracker, resync time.Duration) *Watcher {
	w := &Watcher{tracker: tracker}
	svcFactory := informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = tracker.filter.ServiceLabelSelector() }))
	sliceFactory := informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = "!" + "service.kubernetes.io/headless" }))
	nodeFactory := informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", tracker.nodeName).String()
		}))

	w.services = svcFactory.Core().V1().Services().Informer()
	w.slices = sliceFactory.Discovery().V1().EndpointSlices().Informer()
	w.nodes = nodeFactory.Core().V1().Nodes().Informer()
	for _, inf := range []cache.SharedIndexInformer{w.services, w.slices, w.nodes} {
		_ = inf.SetTransform(newTransform(tracker.filter))
	}

	w.handlers[0], _ = w.services.AddEventHandler(serviceHandler(tracker))
	w.handlers[1], _ = w.slices.AddEventHandler(sliceHandler(tracker))
	w.handlers[2], _ = w.nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { tracker.UpdateNode(obj.(*v1.Node)) },
		UpdateFunc: func(_, obj any) { tracker.UpdateNode(obj.(*v1.Node)) },
		DeleteFunc: func(obj any) {
			if _, name, ok := deletedKey(obj); ok {
				tracker.DeleteNode(name)
			}
		},
	})
	w.start = []func(<-chan struct{}){svcFactory.Start, sliceFactory.Start, nodeFactory.Start}
	return w
}

func deletedKey(obj any) (string, string, bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	m, err := meta.Accessor(obj)
	if err != nil {
		return "", "", false
	}
	return m.GetNamespace(), m.GetName(), true
}

// Start starts the informers and waits until every cache has synced and
// every handler has been given the initial list (the Node cache syncs even
// when the Node does not exist yet). Waiting for the handlers matters: the
// first sync is a full one, and with 10,000 Services it should carry every
// EndpointSlice, not whichever the handlers had seen by then.
func (w *Watcher) Start(ctx context.Context) error {
	for _, s := range w.start {
		s(ctx.Done())
	}
	synced := []cache.InformerSynced{w.services.HasSynced, w.slices.HasSynced, w.nodes.HasSynced}
	for _, h := range w.handlers {
		if h != nil {
			synced = append(synced, h.HasSynced)
		}
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return fmt.Errorf("informer caches did not sync: %w", ctx.Err())
	}
	return nil
}

// EventReporter turns object problems into Kubernetes Events: one per
// object per distinct problem, however often the object is seen again.
type EventReporter struct {
	recorder record.EventRecorder
	mu       sync.Mutex
	seen     map[string]bool
}

// NewEventReporter starts an event broadcaster writing through client.
func NewEventReporter(ctx context.Context, client kubernetes.Interface, nodeName string) *EventReporter {
	b := record.NewBroadcaster(record.WithContext(ctx))
	b.StartStructuredLogging(3)
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	rec := b.NewRecorder(scheme.Scheme, v1.EventSource{Component: "switchyard", Host: nodeName})
	return &EventReporter{recorder: rec, seen: map[string]bool{}}
}

// maxRemembered bounds the memory of problems already reported.
const maxRemembered = 10000

// Warn records a Warning event on the object, unless this object already
// got an event for the same problem.
func (e *EventReporter) Warn(obj any, reason, message string) {
	o, ok := obj.(runtime.Object)
	if !ok {
		return
	}
	key := reason + "|" + message
	if m, err := meta.Accessor(obj); err == nil {
		key = fmt.Sprintf("%T|%s/%s|%s", obj, m.GetNamespace(), m.GetName(), key)
	} else if ref, ok := obj.(*v1.ObjectReference); ok {
		key = fmt.Sprintf("%s|%s/%s|%s", ref.Kind, ref.Namespace, ref.Name, key)
	}
	e.mu.Lock()
	if e.seen[key] {
		e.mu.Unlock()
		return
	}
	if len(e.seen) >= maxRemembered {
		clear(e.seen)
	}
	e.seen[key] = true
	e.mu.Unlock()
	e.recorder.Event(o, v1.EventTypeWarning, reason, message)
}
