package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/test/netns"
	"github.com/switchyard-proxy/switchyard/test/wait"
)

// TestTeardownLeavesNothing starts the conformance cluster (one node, the
// switchyard binary of this tree) with a pod running, then ends it the two
// ways a run ends badly: Ctrl-C (SIGINT), and SIGKILL of the runner
// followed by `conformance --teardown` (what the next run does first).
// Either way the host must be as it was: no namespaces, mounts, cgroups,
// processes, containerd or kubelet state, links or files of the run.
func TestTeardownLeavesNothing(t *testing.T) {
	netns.RequireRoot(t, "containerd", "ctr", "runc", "etcd", "nsenter", "busybox")
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	tools := filepath.Join(repo, "test/e2e/tools/bin")
	for _, bin := range []string{"kubelet", "kubectl", "coredns", "agnhost"} {
		if _, err := os.Stat(filepath.Join(tools, bin)); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("CI is set and %s is not built (make e2e-tools)", bin)
			}
			t.Skipf("%s is not built: run make e2e-tools", bin)
		}
	}
	bin := t.TempDir()
	for _, b := range []struct{ out, pkg string }{
		{"conformance", "."}, {"pause", "./pause"}, {"switchyard", "../../cmd/switchyard"},
	} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, b.out), b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("building %s: %v: %s", b.pkg, err, out)
		}
	}
	before := hostState(t)

	for _, how := range []string{"SIGINT", "SIGKILL, then --teardown"} {
		t.Run(how, func(t *testing.T) {
			logs := t.TempDir()
			cmd := exec.Command(filepath.Join(bin, "conformance"), "--hold", "--nodes=1",
				"--repo="+repo, "--tools="+tools, "--switchyard="+filepath.Join(bin, "switchyard"),
				"--pause="+filepath.Join(bin, "pause"), "--logs="+logs, "--reports="+filepath.Join(logs, "reports"))
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd.Stderr = cmd.Stdout
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			lines := make(chan string, 100)
			go func() {
				s := bufio.NewScanner(out)
				for s.Scan() {
					lines <- s.Text()
				}
				close(lines)
			}()
			kubeconfig := ""
			re := regexp.MustCompile(`export KUBECONFIG=(\S+)`)
			deadline := time.After(3 * time.Minute)
			for kubeconfig == "" {
				select {
				case l, ok := <-lines:
					if !ok {
						t.Fatalf("conformance --hold ended before the cluster was up (logs: %s)", logs)
					}
					t.Log(l)
					if m := re.FindStringSubmatch(l); m != nil {
						kubeconfig = m[1]
					}
				case <-deadline:
					_ = cmd.Process.Kill()
					t.Fatalf("the cluster was not up within 3 minutes (logs: %s)", logs)
				}
			}
			go func() {
				for l := range lines {
					t.Log(l)
				}
			}()

			// A running pod: a sandbox, a container, their mounts, cgroups,
			// shims and network namespace.
			kubectl := func(args ...string) (string, error) {
				out, err := exec.Command(filepath.Join(tools, "kubectl"), append([]string{"--kubeconfig=" + kubeconfig}, args...)...).CombinedOutput()
				return string(out), err
			}
			if out, err := kubectl("run", "sleeper", "--image="+agnhostImage, "--restart=Never", "--", "pause"); err != nil {
				t.Fatalf("kubectl run: %v: %s", err, out)
			}
			var phase string
			if !wait.Poll(90*time.Second, func() bool {
				phase, _ = kubectl("get", "pod", "sleeper", "-o", "jsonpath={.status.phase}")
				return phase == "Running"
			}) {
				t.Fatalf("the pod is %q, not Running, after 90s (logs: %s)", phase, logs)
			}
			if during := hostState(t); during.equal(before) {
				t.Fatalf("a running cluster left no trace the check can see: the check is blind\n%s", during)
			}

			if how == "SIGINT" {
				_ = cmd.Process.Signal(syscall.SIGINT)
				err := waitExit(cmd, 2*time.Minute)
				if code := exitCode(err); code != 130 {
					t.Errorf("conformance exited %d (%v) after SIGINT, want 130", code, err)
				}
			} else {
				_ = cmd.Process.Kill()
				_ = waitExit(cmd, time.Minute)
				if out, err := exec.Command(filepath.Join(bin, "conformance"), "--teardown").CombinedOutput(); err != nil {
					t.Fatalf("conformance --teardown: %v: %s", err, out)
				}
			}
			var after state
			if !wait.Poll(30*time.Second, func() bool { after = hostState(t); return after.equal(before) }) {
				t.Errorf("the host is not as it was before the run.\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

func waitExit(cmd *exec.Cmd, timeout time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		return fmt.Errorf("did not exit within %v", timeout)
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// state is what of the host a run may touch, as lists of names.
type state map[string][]string

func (s state) equal(o state) bool { return s.String() == o.String() }

func (s state) String() string {
	var b strings.Builder
	for _, k := range []string{"netns", "mounts", "cgroups", "processes", "dirs", "links", "tunables"} {
		fmt.Fprintf(&b, "  %s: %v\n", k, s[k])
	}
	return b.String()
}

func hostState(t *testing.T) state {
	t.Helper()
	s := state{}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			s["netns"] = append(s["netns"], f[0])
		}
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && (strings.HasPrefix(f[4], baseDir) || strings.Contains(f[4], "/netns/") || strings.Contains(f[4], "containerd")) {
			s["mounts"] = append(s["mounts"], f[4])
		}
	}
	s["cgroups"] = nodeCgroups()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(cmdline) == 0 {
			continue
		}
		name := filepath.Base(strings.SplitN(string(cmdline), "\x00", 2)[0])
		switch name {
		case "containerd", "containerd-shim-runc-v2", "kubelet", "etcd", "kube-apiserver", "kube-controller-manager",
			"kube-scheduler", "coredns", "switchyard", "agnhost", "pause":
			s["processes"] = append(s["processes"], name)
		}
	}
	for _, d := range append([]string{baseDir}, hostDirs...) {
		_ = filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err == nil {
				s["dirs"] = append(s["dirs"], p)
			}
			return nil
		})
	}
	links, _ := filepath.Glob("/var/log/containers/*")
	s["links"] = links
	for _, k := range kernelTunables {
		v, _ := os.ReadFile("/proc/sys/" + k)
		s["tunables"] = append(s["tunables"], k+"="+strings.TrimSpace(string(v)))
	}
	return s
}
