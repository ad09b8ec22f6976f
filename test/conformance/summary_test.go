package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSummarizeCountsOnlySelectedSpecs: the JUnit report lists every spec
// of the suite; the summary keeps the focused ones (passed, failed, or
// skipped by the spec itself with a reason) and leaves out set-up nodes and
// specs the focus filtered out.
func TestSummarizeCountsOnlySelectedSpecs(t *testing.T) {
	report := `<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="6" disabled="0" errors="0" failures="1" time="1">
  <testsuite name="Kubernetes e2e suite" package="/" tests="6">
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="1"></testcase>
    <testcase name="[It] [sig-network] Services should serve a basic endpoint from pods [Conformance]" classname="Kubernetes e2e suite" status="passed" time="1"></testcase>
    <testcase name="[It] [sig-network] Services should be rejected when no endpoints exist" classname="Kubernetes e2e suite" status="failed" time="1"><failure message="boom" type="failed">boom</failure></testcase>
    <testcase name="[It] [sig-network] Services should implement NodePort and HealthCheckNodePort correctly" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped - Need at least 3 schedulable nodes for this test"></skipped></testcase>
    <testcase name="[It] [sig-storage] In-tree Volumes should store data" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
    <testcase name="[ReportAfterSuite] Kubernetes e2e suite report" classname="Kubernetes e2e suite" status="passed" time="0"></testcase>
  </testsuite>
</testsuites>`
	path := filepath.Join(t.TempDir(), "junit.xml")
	if err := os.WriteFile(path, []byte(report), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := summarize(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"1 passed, 1 failed, 1 skipped",
		"PASSED  [sig-network] Services should serve a basic endpoint from pods [Conformance]",
		"FAILED  [sig-network] Services should be rejected when no endpoints exist",
		"SKIPPED [sig-network] Services should implement NodePort and HealthCheckNodePort correctly (Need at least 3 schedulable nodes for this test)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("summary lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "sig-storage") || strings.Contains(got, "Suite") {
		t.Errorf("summary lists specs the focus left out or suite nodes:\n%s", got)
	}
}
