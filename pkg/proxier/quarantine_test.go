package proxier

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
)

func TestRefusedServiceIsQuarantinedAndTheRestProgrammed(t *testing.T) {
	ctx := context.Background()
	fake := iptables.NewFake()
	var refuse atomic.Bool
	refuse.Store(true)
	fake.Reject = func(text string) error {
		if refuse.Load() && strings.Contains(text, "default/poison:http") {
			return errors.New("iptables-restore: line 42 failed")
		}
		return nil
	}
	s := NewSyncer(defaultConfig(), fake)
	build := func(poisonEndpoints int) *Snapshot {
		snap := NewSnapshot()
		addService(snap, "web", "10.96.0.10", 2)
		addService(snap, "db", "10.96.0.20", 1)
		addService(snap, "poison", "10.96.0.30", poisonEndpoints)
		addService(snap, "zeta", "10.96.0.40", 3)
		return snap
	}
	snap := build(2)
	res, err := s.Sync(ctx, snap)
	if err != nil {
		t.Fatalf("one bad Service failed the whole sync: %v", err)
	}
	if res.Quarantined != 1 {
		t.Errorf("quarantined %d, want 1", res.Quarantined)
	}
	q := s.Quarantined()
	if _, ok := q[spn("poison", "http")]; !ok || len(q) != 1 {
		t.Fatalf("quarantine = %v", q)
	}
	for _, name := range []string{"web", "db", "zeta"} {
		if len(fake.Snapshot().ChainNames(TableNAT, ServiceChainName(spn(name, "http")))) != 1 {
			t.Errorf("%s was not programmed", name)
		}
	}
	if strings.Contains(fake.Snapshot().Save(), "default/poison") {
		t.Error("the refused Service's rules are on the host")
	}

	// Unchanged: stays out, no new bisection.
	tests := fake.Tests
	if _, err := s.Sync(ctx, build(2)); err != nil {
		t.Fatal(err)
	}
	if fake.Tests != tests {
		t.Errorf("an unchanged quarantined Service was bisected again")
	}
	// It changes and the kernel accepts it now: it is programmed.
	refuse.Store(false)
	if _, err := s.Sync(ctx, build(3)); err != nil {
		t.Fatal(err)
	}
	if len(s.Quarantined()) != 0 || len(fake.Snapshot().ChainNames(TableNAT, ServiceChainName(spn("poison", "http")))) != 1 {
		t.Errorf("the changed Service was not retried: quarantine %v", s.Quarantined())
	}
}

func TestUnpinnableFailureIsNotBlamedOnServices(t *testing.T) {
	ctx := context.Background()
	fake := iptables.NewFake()
	// Everything fails, even the fixed chains: no Service is to blame.
	fake.Reject = func(string) error { return errors.New("no nat table") }
	s := NewSyncer(defaultConfig(), fake)
	snap := NewSnapshot()
	addService(snap, "web", "10.96.0.10", 2)
	if _, err := s.Sync(ctx, snap); err == nil {
		t.Fatal("expected the sync to fail")
	}
	if len(s.Quarantined()) != 0 {
		t.Errorf("quarantined %v for a failure no Service causes", s.Quarantined())
	}
}
