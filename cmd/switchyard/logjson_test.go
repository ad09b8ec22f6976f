package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestJSONLogLines(t *testing.T) {
	var b bytes.Buffer
	l := newJSONLogger(&b).WithName("switchyard").WithValues("node", "n1")
	l.Info("Synced rules", "family", "IPv4", "chains", 3)
	l.Error(errors.New("boom"), "Restore failed", "family", "IPv6")
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 lines, got %q", b.String())
	}
	var info, errLine map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &info); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &errLine); err != nil {
		t.Fatal(err)
	}
	if info["msg"] != "Synced rules" || info["v"] != 0.0 || info["node"] != "n1" || info["family"] != "IPv4" ||
		info["chains"] != 3.0 || info["logger"] != "switchyard" || info["ts"] == nil || !strings.HasPrefix(info["caller"].(string), "logjson_test.go:") {
		t.Errorf("info line: %s", lines[0])
	}
	if errLine["err"] != "boom" || errLine["msg"] != "Restore failed" || errLine["v"] != nil {
		t.Errorf("error line: %s", lines[1])
	}
}
