package cluster

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/test/netns"
	"github.com/switchyard-proxy/switchyard/test/wait"
)

// Converge is how long a change may take to show in the traffic.
const Converge = 30 * time.Second

// requestTimeout bounds one request.
// RequestTimeout bounds one request.
const RequestTimeout = 2 * time.Second

const requestTimeout = RequestTimeout

// Request sends one request (TCP connection or UDP datagram) from ns.
func Request(ns *netns.NS, proto, addr string) (netns.Answer, error) {
	if proto == "udp" {
		return ns.GetUDP(addr, requestTimeout)
	}
	return ns.GetTCP(addr, requestTimeout)
}

// ReachesAll waits until every one of want has answered requests from ns to
// addr (failures while the rules converge are tolerated). It returns the
// client address each server saw, and fails when an unexpected server
// answers.
func ReachesAll(t testing.TB, ns *netns.NS, proto, addr string, want []string) map[string]string {
	t.Helper()
	seen := map[string]string{}
	var last error
	wantSet := toSet(want)
	ok := wait.Poll(Converge, func() bool {
		a, err := Request(ns, proto, addr)
		if err != nil {
			last = err
			return false
		}
		if !wantSet[a.Server] {
			last = fmt.Errorf("unexpected server %s answered", a.Server)
			seen = map[string]string{} // start over: the rules are not there yet
			return false
		}
		seen[a.Server] = a.Client
		return len(seen) == len(want)
	})
	if !ok {
		t.Fatalf("%s %s from %s: within %v only %v of %v answered (last: %v)", proto, addr, ns.Name, Converge, keys(seen), want, last)
	}
	return seen
}

// Answers waits until a request from ns to addr is answered, and returns
// the answer.
func Answers(t testing.TB, ns *netns.NS, proto, addr string) netns.Answer {
	t.Helper()
	var a netns.Answer
	err := wait.Retry(Converge, func() (err error) {
		a, err = Request(ns, proto, addr)
		return err
	})
	if err != nil {
		t.Fatalf("%s %s from %s: no answer within %v: %v", proto, addr, ns.Name, Converge, err)
	}
	return a
}

// OnlyReaches waits until n requests in a row from ns to addr are all
// answered by servers in want, and returns who answered them.
func OnlyReaches(t testing.TB, ns *netns.NS, proto, addr string, want []string, n int) map[string]int {
	t.Helper()
	wantSet := toSet(want)
	var counts map[string]int
	var last error
	ok := wait.Poll(Converge, func() bool {
		counts = map[string]int{}
		for i := 0; i < n; i++ {
			a, err := Request(ns, proto, addr)
			if err != nil {
				last = err
				return false
			}
			if !wantSet[a.Server] {
				last = fmt.Errorf("%s answered", a.Server)
				return false
			}
			counts[a.Server]++
		}
		return true
	})
	if !ok {
		t.Fatalf("%s %s from %s: never %d answers in a row only from %v (last: %v)", proto, addr, ns.Name, n, want, last)
	}
	return counts
}

// Refused waits until a TCP connection from ns to addr is refused: the
// client gets ECONNREFUSED within one request timeout, which only an active
// REJECT (ICMP port unreachable or RST) produces; a DROP would time out.
// (The refusal itself may lag by a SYN retransmission when the kernel's
// per-destination ICMP rate limit is spent, so no stopwatch is applied.)
func Refused(t testing.TB, ns *netns.NS, addr string) {
	t.Helper()
	var last error
	ok := wait.Poll(Converge, func() bool {
		_, err := ns.GetTCP(addr, requestTimeout)
		last = err
		return errors.Is(err, syscall.ECONNREFUSED)
	})
	if !ok {
		t.Fatalf("tcp %s from %s: not refused within %v (last: %v)", addr, ns.Name, Converge, last)
	}
}

// NoAnswer waits until a TCP connection from ns to addr gets no answer at
// all (nothing programmed for it any more).
func NoAnswer(t testing.TB, ns *netns.NS, addr string) {
	t.Helper()
	var last error
	ok := wait.Poll(Converge, func() bool {
		_, err := ns.GetTCP(addr, 500*time.Millisecond)
		last = err
		var ne interface{ Timeout() bool }
		return err != nil && errors.As(err, &ne) && ne.Timeout()
	})
	if !ok {
		t.Fatalf("tcp %s from %s: still answered within %v (last: %v)", addr, ns.Name, Converge, last)
	}
}

func toSet(list []string) map[string]bool {
	s := map[string]bool{}
	for _, x := range list {
		s[x] = true
	}
	return s
}

func keys[V any](m map[string]V) string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return "[" + strings.Join(out, " ") + "]"
}
