package iptables

import (
	"errors"
	"fmt"
	"testing"
)

// The messages are what iptables 1.8 (legacy) prints when another program
// holds /run/xtables.lock past -w.
func TestWrapBusyMarksOnlyLockTimeouts(t *testing.T) {
	for _, c := range []struct {
		err  error
		busy bool
	}{
		{fmt.Errorf("running [/usr/sbin/iptables-legacy -t nat -S PREROUTING --wait 10]: exit status 4: Can't lock /run/xtables.lock: Resource temporarily unavailable\nAnother app is currently holding the xtables lock. Stopped waiting after 10s."), true},
		{fmt.Errorf("iptables-legacy-restore: exit status 4: Another app is currently holding the xtables lock. Stopped waiting after 5s."), true},
		{fmt.Errorf("running [iptables -t nat -S NOPE]: exit status 1: iptables: No chain/target/match by that name."), false},
		{nil, false},
	} {
		got := wrapBusy(c.err)
		if errors.Is(got, ErrLockBusy) != c.busy {
			t.Errorf("wrapBusy(%v) busy = %v, want %v", c.err, !c.busy, c.busy)
		}
		if c.err != nil && !errors.Is(got, c.err) {
			t.Errorf("wrapBusy(%v) lost the cause", c.err)
		}
		if again := wrapBusy(got); again != got {
			t.Errorf("wrapBusy wrapped twice: %v", again)
		}
	}
}
