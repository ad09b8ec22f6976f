package netns

import (
	"sync"
	"sync/atomic"
	"time"
)

// Load sends requests one after another in the background until stopped or
// max requests have been sent, counting failures.
type Load struct {
	stop     chan struct{}
	done     chan struct{}
	requests atomic.Int32
	failures atomic.Int32
	mu       sync.Mutex
	firstErr error
	firstAt  time.Time
}

// StartLoad starts calling request in a loop, at most max times.
func StartLoad(max int, request func() error) *Load {
	l := &Load{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for i := 0; i < max; i++ {
			select {
			case <-l.stop:
				return
			default:
			}
			if err := request(); err != nil {
				l.failures.Add(1)
				l.mu.Lock()
				if l.firstErr == nil {
					l.firstErr, l.firstAt = err, time.Now()
				}
				l.mu.Unlock()
			}
			l.requests.Add(1)
		}
	}()
	return l
}

// FirstFailure is when the first failed request ended (zero if none did).
func (l *Load) FirstFailure() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.firstAt
}

// Requests is how many requests have been sent so far.
func (l *Load) Requests() int { return int(l.requests.Load()) }

// Stop ends the loop and returns the number of requests, of failures, and
// the first error.
func (l *Load) Stop() (requests, failures int, firstErr error) {
	close(l.stop)
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return int(l.requests.Load()), int(l.failures.Load()), l.firstErr
}
