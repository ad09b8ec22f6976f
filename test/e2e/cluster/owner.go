// Package cluster runs a real Kubernetes control plane (etcd, kube-apiserver,
// kube-controller-manager) and nodes made of network namespaces, each node
// running its own switchyard, with pods behind them answering real traffic.
// The e2e suite and `make run` use it.
package cluster

import (
	"fmt"
	"sync"
)

// Owner holds resources that outlive one test (the suite's cluster, the
// `make run` demo). It satisfies netns.T: Fatalf panics with a *Failure,
// which Run turns back into an error after cleaning up.
type Owner struct {
	mu       sync.Mutex
	cleanups []func()
}

// Failure is the panic value of Owner.Fatalf.
type Failure struct{ Msg string }

func (f *Failure) Error() string { return f.Msg }

func (o *Owner) Helper() {}

func (o *Owner) Fatalf(format string, args ...any) {
	panic(&Failure{Msg: fmt.Sprintf(format, args...)})
}

func (o *Owner) Cleanup(f func()) {
	o.mu.Lock()
	o.cleanups = append(o.cleanups, f)
	o.mu.Unlock()
}

// Close runs the cleanups, last registered first.
func (o *Owner) Close() {
	o.mu.Lock()
	fs := o.cleanups
	o.cleanups = nil
	o.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}

// Catch runs f and returns the failure it raised through Fatalf, if any;
// other panics propagate.
func (o *Owner) Catch(f func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if fl, ok := r.(*Failure); ok {
				err = fl
				return
			}
			panic(r)
		}
	}()
	f()
	return nil
}
