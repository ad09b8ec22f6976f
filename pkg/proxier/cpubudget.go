package proxier

import (
	"sync"
	"syscall"
	"time"
)

// cpuBudget keeps the sync loops, with the iptables processes they run, to
// a share of one core under sustained churn, while a quiet node still syncs
// at once. It is a token bucket of CPU time: it refills at Share CPU-seconds
// per second up to a burst of Share x window, and every sync is charged the
// CPU the whole process and its reaped children used while it ran (syncs of
// both families running at once are charged once; a family's first sync,
// the cold start, is not charged). Over any span of T seconds the loops use
// at most Share x T + burst CPU-seconds, so under sustained churn their
// average tends to Share. A sync may start only
// while the balance is not negative; a deficit delays it by deficit/Share,
// and the changes that arrive meanwhile are applied together by it.
type cpuBudget struct {
	share float64 // CPU-seconds per second
	burst float64 // CPU-seconds
	// maxDelay bounds any one delay, so a sync that cost far more than the
	// burst (a cold start on a huge cluster) does not hold the next one back
	// for minutes.
	maxDelay time.Duration
	now      func() time.Time
	used     func() time.Duration // CPU time used so far (process + children)

	mu       sync.Mutex
	balance  float64
	refilled time.Time
	active   int           // syncs running
	since    time.Duration // used() when the first of them started
}

// cpuBudgetWindow is how many seconds of the share the bucket holds: after
// a quiet spell, changes are applied at full speed until the loops have
// spent this long's worth of the share (at 10,000 Services, where a one-
// change sync costs about 0.2 CPU-seconds, some 75 back-to-back changes at a
// quarter core); only churn that goes on longer is spaced out.
const cpuBudgetWindow = time.Minute

func newCPUBudget(share float64, maxDelay time.Duration) *cpuBudget {
	if share <= 0 {
		return nil
	}
	b := &cpuBudget{share: share, burst: share * cpuBudgetWindow.Seconds(), maxDelay: maxDelay,
		now: time.Now, used: processCPU}
	b.balance = b.burst
	b.refilled = b.now()
	return b
}

// processCPU is the user and system time of this process and of its
// children that have been waited for.
func processCPU() time.Duration {
	var self, children syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &children)
	tv := func(t syscall.Timeval) time.Duration {
		return time.Duration(t.Sec)*time.Second + time.Duration(t.Usec)*time.Microsecond
	}
	return tv(self.Utime) + tv(self.Stime) + tv(children.Utime) + tv(children.Stime)
}

// refillLocked adds the share earned since the last refill.
func (b *cpuBudget) refillLocked() {
	now := b.now()
	b.balance = min(b.burst, b.balance+b.share*now.Sub(b.refilled).Seconds())
	b.refilled = now
}

// Delay is how long the next sync must wait for the budget; zero when it
// may start now. A nil budget never delays.
func (b *cpuBudget) Delay() time.Duration {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refillLocked()
	if b.balance >= 0 {
		return 0
	}
	d := time.Duration(-b.balance / b.share * float64(time.Second))
	if d > b.maxDelay {
		d = b.maxDelay
	}
	return d
}

// Start marks a sync as begun; the function it returns marks it done and
// charges the budget.
func (b *cpuBudget) Start() (done func()) {
	if b == nil {
		return func() {}
	}
	b.mu.Lock()
	if b.active == 0 {
		b.since = b.used()
	}
	b.active++
	b.mu.Unlock()
	return func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.active--
		if b.active > 0 {
			return // the last sync to end charges the time of them all
		}
		b.refillLocked()
		b.balance -= (b.used() - b.since).Seconds()
		// A deficit deeper than maxDelay's worth would outlast the bound
		// on any one delay and slow every sync after it; forget the rest.
		b.balance = max(b.balance, -b.share*b.maxDelay.Seconds())
	}
}

// Balance is the CPU-seconds left in the bucket (negative: owed).
func (b *cpuBudget) Balance() float64 {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refillLocked()
	return b.balance
}
