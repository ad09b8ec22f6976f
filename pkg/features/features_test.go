package features

import (
	"strings"
	"testing"
)

func TestGatesAsKubeProxyValidatesThem(t *testing.T) {
	for _, tc := range []struct {
		name    string
		flag    string
		wantErr string
		warn    string
	}{
		{name: "none"},
		{name: "external IPs off", flag: "AllowServiceExternalIPs=false", warn: "Setting GA feature gate AllowServiceExternalIPs=false"},
		{name: "unknown", flag: "NoSuchGate=true", wantErr: "unrecognized feature gate: NoSuchGate"},
		{name: "locked against its lock", flag: "PreferSameTrafficDistribution=false", wantErr: "cannot set feature gate PreferSameTrafficDistribution to false, feature is locked to true"},
		{name: "locked to its lock", flag: "PreferSameTrafficDistribution=true", warn: "Setting GA feature gate PreferSameTrafficDistribution=true"},
		{name: "not applying", flag: "WatchListClient=false", warn: "do not change what switchyard does and are ignored: WatchListClient=false"},
		{name: "not a bool", flag: "AllowServiceExternalIPs=maybe", wantErr: "invalid value of AllowServiceExternalIPs=maybe"},
		{name: "no value", flag: "AllowServiceExternalIPs", wantErr: "missing bool value for AllowServiceExternalIPs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			values, err := ParseFlag(tc.flag)
			var g Gates
			if err == nil {
				g, err = New(values)
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			joined := strings.Join(g.Warnings, "\n")
			if tc.warn != "" && !strings.Contains(joined, tc.warn) {
				t.Fatalf("warnings %q lack %q", joined, tc.warn)
			}
			if tc.warn == "" && joined != "" {
				t.Fatalf("unexpected warnings %q", joined)
			}
		})
	}
}

func TestEnabledDefaultsAndAllBeta(t *testing.T) {
	g, err := New(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !g.Enabled(AllowServiceExternalIPs) {
		t.Fatal("AllowServiceExternalIPs must default to true")
	}
	g, err = New(map[string]bool{AllowServiceExternalIPs: false, "AllAlpha": true})
	if err != nil {
		t.Fatal(err)
	}
	if g.Enabled(AllowServiceExternalIPs) {
		t.Fatal("AllowServiceExternalIPs=false was not honoured")
	}
	if !g.Enabled("EventedPLEG") {
		t.Fatal("AllAlpha=true did not enable an alpha gate")
	}
	if !Known("WatchListClient") || Known("NoSuchGate") {
		t.Fatal("Known is wrong")
	}
}
