// Package wait is the one way tests wait: poll a condition until it holds or
// a deadline passes. No test sleeps for synchronisation.
package wait

import (
	"testing"
	"time"
)

// Interval is how often conditions are polled.
const Interval = 10 * time.Millisecond

// For polls cond until it returns true, failing the test with what when
// timeout passes first.
func For(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	if !Poll(timeout, cond) {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// Poll polls cond until it returns true (true) or timeout passes (false).
func Poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(Interval)
	}
	return true
}

// Retry calls fn until it returns nil or timeout passes, returning the last
// error.
func Retry(timeout time.Duration, fn func() error) error {
	var err error
	Poll(timeout, func() bool {
		err = fn()
		return err == nil
	})
	return err
}
