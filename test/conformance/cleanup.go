package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/switchyard-proxy/switchyard/test/wait"
)

// What a run leaves on the host outside its network namespaces, and how
// teardown finds it again, also after the run itself was killed:
//   - the network namespaces prefix-* (nodes, underlay, DNS), which a
//     killed run did not delete;
//   - everything on disk under baseDir (the control plane's directory,
//     containerd's root and state, the kubelets' roots, pod logs, images),
//     with the mounts made there (container root filesystems, shm, volume
//     tmpfs, the nodes' UTS namespaces);
//   - the nodes' cgroups, /swy-node-N in every hierarchy, holding every
//     container's processes;
//   - the processes that name files under baseDir: the containerd shims
//     (they outlive containerd by design), and everything else a killed
//     run started;
//   - the pods' network namespaces, /var/run/netns/cni-*, made since the
//     run began;
//   - what the run added to hostDirs (below);
//   - the kubelets' links in /var/log/containers into baseDir;
//   - the kernel settings the kubelet changes (protectKernelDefaults is
//     false: it writes vm.overcommit_memory, kernel.panic, ...), restored.
const baseDir = "/var/lib/swy-conformance"

var kernelTunables = []string{"vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops", "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"}

// hostDirs are directories outside baseDir that containerd, the CNI
// plugins and the kubelet write to whatever their configuration says: the
// shims' sockets (/run/containerd/s), libcni's result cache, the kubelet's
// device-plugin socket, and the xtables lock the proxies' DaemonSets mount
// (a hostPath FileOrCreate). What the run added there is removed; a path
// that did not exist before the run is removed whole.
var hostDirs = []string{"/run/containerd", "/var/lib/cni", "/var/lib/kubelet", "/run/xtables.lock"}

// runRecord is what teardown needs to know about the host before the run:
// it is kept in baseDir/started, so a later run can tear down a killed one.
type runRecord struct {
	Start    time.Time
	Tunables map[string]string // kernel setting -> value before the run
	Existed  map[string]bool   // hostDirs entry -> existed before the run
}

func snapshotHost() runRecord {
	r := runRecord{Start: time.Now().Add(-time.Second), Tunables: map[string]string{}, Existed: map[string]bool{}}
	for _, k := range kernelTunables {
		if b, err := os.ReadFile("/proc/sys/" + k); err == nil {
			r.Tunables[k] = strings.TrimSpace(string(b))
		}
	}
	for _, d := range hostDirs {
		_, err := os.Lstat(d)
		r.Existed[d] = err == nil
	}
	return r
}

// prepare removes what an earlier, killed run left, then records the host
// as it is before this run.
func prepare() error {
	if _, err := os.Stat(baseDir); err == nil {
		fmt.Println("conformance: removing what an earlier run left behind...")
		teardownHost()
	}
	if err := os.MkdirAll(baseDir, 0o755); err != nil {
		return err
	}
	b, err := json.Marshal(snapshotHost())
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(baseDir, "started"), b, 0o644)
}

// teardownHost removes everything listed above. Errors are printed, not
// returned: teardown goes as far as it can.
func teardownHost() {
	var rec runRecord
	_, dirErr := os.Stat(baseDir)
	b, err := os.ReadFile(filepath.Join(baseDir, "started"))
	if err == nil {
		err = json.Unmarshal(b, &rec)
	}
	killCgroups()
	killUnder(baseDir)
	removeOwnNetns()
	unmountUnder(baseDir)
	if err == nil {
		removePodNetns(rec.Start)
		removeAdded(rec)
		restoreTunables(rec.Tunables)
	} else if dirErr == nil {
		fmt.Fprintf(os.Stderr, "conformance: teardown: no record of the host before the run (%v): pod network namespaces and kernel settings left as they are\n", err)
	}
	removeLogLinks()
	if err := os.RemoveAll(baseDir); err != nil {
		fmt.Fprintf(os.Stderr, "conformance: teardown: %v\n", err)
	}
}

// removeAdded removes from hostDirs what appeared there since rec.Start.
func removeAdded(rec runRecord) {
	for _, d := range hostDirs {
		if !rec.Existed[d] {
			if err := os.RemoveAll(d); err != nil {
				fmt.Fprintf(os.Stderr, "conformance: teardown: %v\n", err)
			}
			continue
		}
		var added []string
		_ = filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err != nil || p == d {
				return nil
			}
			if fi, err := e.Info(); err == nil && !fi.ModTime().Before(rec.Start) && !e.IsDir() {
				added = append(added, p)
			}
			return nil
		})
		for _, p := range added {
			_ = os.Remove(p)
		}
	}
}

// nodeCgroups lists /sys/fs/cgroup/<hierarchy>/swy-node-* directories.
func nodeCgroups() []string {
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*/swy-node-*")
	return dirs
}

func killCgroups() {
	var tops []string
	for _, d := range nodeCgroups() {
		if fi, err := os.Lstat(d); err == nil && fi.IsDir() {
			tops = append(tops, d)
		}
	}
	if len(tops) == 0 {
		return
	}
	procs := func() []int {
		var pids []int
		for _, top := range tops {
			_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
				if err != nil || d.Name() != "cgroup.procs" {
					return nil
				}
				b, _ := os.ReadFile(p)
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil {
						pids = append(pids, pid)
					}
				}
				return nil
			})
		}
		return pids
	}
	wait.Poll(20*time.Second, func() bool {
		pids := procs()
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		return len(pids) == 0
	})
	// Remove the directories deepest first; a cgroup is removable once
	// its last process is gone.
	var all []string
	for _, top := range tops {
		_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				all = append(all, p)
			}
			return nil
		})
	}
	sort.Slice(all, func(i, j int) bool { return strings.Count(all[i], "/") > strings.Count(all[j], "/") })
	for _, d := range all {
		if !wait.Poll(5*time.Second, func() bool {
			err := syscall.Rmdir(d)
			return err == nil || errors.Is(err, syscall.ENOENT)
		}) {
			fmt.Fprintf(os.Stderr, "conformance: teardown: cgroup %s could not be removed\n", d)
		}
	}
}

// removeOwnNetns deletes the run's own network namespaces (prefix-*).
func removeOwnNetns() {
	paths, _ := filepath.Glob("/var/run/netns/" + prefix + "-*")
	for _, p := range paths {
		if out, err := exec.Command("ip", "netns", "del", filepath.Base(p)).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "conformance: teardown: %v: %s\n", err, out)
		}
	}
}

// killUnder kills every process whose command line names a path under
// dir: the shims (they outlive containerd by design), and after a killed
// run whatever else it started (etcd, the apiserver, containerd, the
// kubelets, the proxies and CoreDNS all name their files there).
func killUnder(dir string) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if strings.Contains(strings.ReplaceAll(string(cmd), "\x00", " "), dir+"/") {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// unmountUnder detaches every mount at or below dir, deepest first.
func unmountUnder(dir string) {
	for attempt := 0; attempt < 3; attempt++ {
		points := mountsUnder(dir)
		if len(points) == 0 {
			return
		}
		for _, p := range points {
			if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && attempt == 2 {
				fmt.Fprintf(os.Stderr, "conformance: teardown: umount %s: %v\n", p, err)
			}
		}
	}
}

func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var points []string
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 5 {
			continue
		}
		p := unescapeMount(fields[4])
		if p == dir || strings.HasPrefix(p, dir+"/") {
			points = append(points, p)
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	return points
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, ...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removePodNetns removes the network namespaces the CNI made for pods
// since the run began.
func removePodNetns(since time.Time) {
	paths, _ := filepath.Glob("/var/run/netns/cni-*")
	for _, p := range paths {
		fi, err := os.Lstat(p)
		if err != nil || fi.ModTime().Before(since) {
			continue
		}
		_ = syscall.Unmount(p, syscall.MNT_DETACH)
		if err := os.Remove(p); err != nil {
			fmt.Fprintf(os.Stderr, "conformance: teardown: %v\n", err)
		}
	}
}

// removeLogLinks removes the kubelets' container log links that lead into
// baseDir.
func removeLogLinks() {
	links, _ := filepath.Glob("/var/log/containers/*")
	for _, l := range links {
		if target, err := os.Readlink(l); err == nil && strings.HasPrefix(target, baseDir+"/") {
			_ = os.Remove(l)
		}
	}
}

func restoreTunables(saved map[string]string) {
	for k, v := range saved {
		cur, _ := os.ReadFile("/proc/sys/" + k)
		if strings.TrimSpace(string(cur)) != v {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
				fmt.Fprintf(os.Stderr, "conformance: teardown: restoring %s=%s: %v\n", k, v, err)
			}
		}
	}
}
