package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// execute runs the command line and returns stdout, the exit code main
// would use and the error.
func execute(t *testing.T, args ...string) (string, int, error) {
	t.Helper()
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&bytes.Buffer{})
	cmd.SetArgs(args)
	err := cmd.Execute()
	code := 0
	if err != nil {
		code = 1
		var ue usageError
		if errors.As(err, &ue) {
			code = 2
		}
	}
	return out.String(), code, err
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "objects.yaml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const catalogue = "../../pkg/proxier/testdata/objects/"

func TestRenderMatchesGolden(t *testing.T) {
	out, _, err := execute(t, "render", "-f", catalogue+"basic.yaml", "--cluster-cidr", "10.244.0.0/16", "--hostname-override", "node-a")
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("../../pkg/proxier/testdata/basic.golden")
	if err != nil {
		t.Fatal(err)
	}
	if out != string(want) {
		t.Errorf("render output differs from basic.golden:\n%s", out)
	}
}

func TestBadInputExitsTwoNamingTheProblem(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"unknown flag", []string{"--no-such-flag"}, []string{"no-such-flag"}},
		{"missing file", []string{"render", "-f", "/no/such/file"}, []string{"/no/such/file"}},
		{"no files", []string{"render"}, []string{"-f"}},
		{"bad cidr", []string{"render", "-f", catalogue + "basic.yaml", "--cluster-cidr", "10.0.0.0/99"}, []string{"--cluster-cidr"}},
		{"bad masquerade bit", []string{"render", "-f", catalogue + "basic.yaml", "--iptables-masquerade-bit", "32"}, []string{"--iptables-masquerade-bit"}},
		{"bad backend", []string{"--iptables-backend", "ebpf", "--kubeconfig", "x"}, []string{"--iptables-backend"}},
		{"wrong type", []string{"render", "-f", writeFile(t, "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports: [{port: eighty}]\n")},
			[]string{"objects.yaml", "document 1", "port"}},
		{"bad cluster IP", []string{"render", "-f", writeFile(t, "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns}\nspec:\n  clusterIP: 10.0.0.300\n  ports: [{port: 80}]\n")},
			[]string{"objects.yaml", "ns/a", "spec.clusterIPs[0]"}},
		{"bad endpoint", []string{"render", "-f", writeFile(t, "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, namespace: ns, labels: {kubernetes.io/service-name: a}}\naddressType: IPv4\nports: [{port: 80}]\nendpoints: [{addresses: [x.y]}]\n")},
			[]string{"ns/s", "endpoints[0].addresses[0]"}},
		{"broken yaml", []string{"render", "-f", writeFile(t, "kind: [\n")}, []string{"objects.yaml"}},
		{"explain bad --to", []string{"explain", "-f", catalogue + "basic.yaml", "--from", "10.0.0.1", "--to", "10.96.0.10"}, []string{"--to"}},
		{"explain bad proto", []string{"explain", "-f", catalogue + "basic.yaml", "--from", "10.0.0.1", "--to", "10.96.0.10:80", "--proto", "icmp"}, []string{"--proto"}},
		{"stray argument", []string{"render", "extra", "-f", catalogue + "basic.yaml"}, []string{"extra"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, code, err := execute(t, c.args...)
			if code != 2 {
				t.Fatalf("exit code %d (err %v), want 2", code, err)
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("error is not one line: %q", msg)
			}
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not mention %q", msg, w)
				}
			}
		})
	}
}

func TestExplainJSON(t *testing.T) {
	out, _, err := execute(t, "explain", "-f", catalogue+"basic.yaml", "--cluster-cidr", "10.244.0.0/16",
		"--hostname-override", "node-a", "--from", "192.168.50.10", "--to", "10.96.0.10:80", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Summary   string   `json:"summary"`
		Endpoints []string `json:"endpoints"`
		Local     bool     `json:"local"`
		Outcomes  []struct {
			Masquerade bool `json:"masquerade"`
		} `json:"outcomes"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if !got.Local || len(got.Endpoints) != 2 || len(got.Outcomes) != 2 || !got.Outcomes[0].Masquerade {
		t.Errorf("explain from the node: %+v", got)
	}

	out, _, err = execute(t, "explain", "-f", catalogue+"basic.yaml", "--from", "10.244.3.3", "--to", "10.96.0.11:53", "--proto", "udp")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "rejected: default/empty has no endpoints") {
		t.Errorf("explain text does not say why:\n%s", out)
	}
}

func TestVersion(t *testing.T) {
	out, _, err := execute(t, "version")
	if err != nil || !strings.HasPrefix(out, "switchyard ") {
		t.Errorf("version: %q %v", out, err)
	}
}

func TestRenderAndExplainIPv6(t *testing.T) {
	args := []string{"-f", catalogue + "dualstack.yaml", "--cluster-cidr", "10.244.0.0/16,fd00:10:244::/48", "--hostname-override", "node-a", "--ip-family", "ipv6"}
	out, _, err := execute(t, append([]string{"render"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("../../pkg/proxier/testdata/dualstack-ipv6.golden")
	if err != nil {
		t.Fatal(err)
	}
	if out != string(want) {
		t.Errorf("render --ip-family ipv6 differs from dualstack-ipv6.golden:\n%s", out)
	}
	out, _, err = execute(t, append([]string{"explain", "--from", "fd00:10:244:3::9", "--to", "[fd00:96::70:1]:80"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "six/ds:http -> [fd00:10:244:1::70]:8080, [fd00:10:244:2::70]:8080") {
		t.Errorf("explain over IPv6:\n%s", out)
	}
}
