package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// The images the focused specs run, under the exact names e2e.test v1.36.3
// asks for (test/utils/image/manifest.go), and the cluster DNS.
const (
	pauseImage   = "registry.k8s.io/pause:3.10.2"
	agnhostImage = "registry.k8s.io/e2e-test-images/agnhost:2.63.0"
	busyboxImage = "registry.k8s.io/e2e-test-images/busybox:1.37.0-1"
)

// rootfs is an image's single layer being assembled in memory: path ->
// entry. Paths are relative, without a leading slash.
type rootfs struct {
	entries map[string]*tar.Header
	data    map[string][]byte
}

func newRootfs() *rootfs {
	r := &rootfs{entries: map[string]*tar.Header{}, data: map[string][]byte{}}
	// Debian's merged /usr: the host's binaries and libraries keep their
	// paths, and /bin, /lib, ... lead where they do on the host.
	for _, d := range []string{"usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc", "root", "var", "proc", "sys", "dev"} {
		r.dir(d, 0o755)
	}
	r.dir("tmp", 0o1777)
	for _, l := range []string{"bin", "sbin", "lib", "lib64"} {
		r.symlink(l, "usr/"+l)
	}
	r.file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"))
	r.file("etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n"))
	r.file("etc/nsswitch.conf", 0o644, []byte("passwd: files\ngroup: files\nhosts: files dns\nnetworks: files\nservices: files\nprotocols: files\n"))
	for _, f := range []string{"/etc/services", "/etc/protocols"} {
		if b, err := os.ReadFile(f); err == nil {
			r.file(strings.TrimPrefix(f, "/"), 0o644, b)
		}
	}
	return r
}

func (r *rootfs) dir(p string, mode int64) {
	r.parents(p)
	r.entries[p] = &tar.Header{Typeflag: tar.TypeDir, Name: p + "/", Mode: mode}
}

func (r *rootfs) parents(p string) {
	if parent := path.Dir(p); parent != "." {
		if _, ok := r.entries[parent]; !ok {
			r.dir(parent, 0o755)
		}
	}
}

func (r *rootfs) file(p string, mode int64, b []byte) {
	r.parents(p)
	r.entries[p] = &tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: mode, Size: int64(len(b))}
	r.data[p] = b
}

func (r *rootfs) symlink(p, target string) {
	r.parents(p)
	r.entries[p] = &tar.Header{Typeflag: tar.TypeSymlink, Name: p, Linkname: target, Mode: 0o777}
}

// copyFile copies a host file (symlinks resolved) to the same path inside.
func (r *rootfs) copyFile(hostPath, inside string) error {
	b, err := os.ReadFile(hostPath)
	if err != nil {
		return err
	}
	st, err := os.Stat(hostPath)
	if err != nil {
		return err
	}
	r.file(strings.TrimPrefix(inside, "/"), int64(st.Mode().Perm()), b)
	return nil
}

// canonical resolves a host path through the merged-/usr links, so that
// "/lib/x86_64-linux-gnu/libc.so.6" is stored once as usr/lib/...
func canonical(p string) string {
	dir, err := filepath.EvalSymlinks(filepath.Dir(p))
	if err != nil {
		return p
	}
	return filepath.Join(dir, filepath.Base(p))
}

// addProgram copies a host program and every shared library ldd names for
// it. The program is stored under each name given (the first one as the
// file, the rest as links to it).
func (r *rootfs) addProgram(hostPath string, names ...string) error {
	real, err := filepath.EvalSymlinks(hostPath)
	if err != nil {
		return fmt.Errorf("%s: %w", hostPath, err)
	}
	if len(names) == 0 {
		names = []string{canonical(hostPath)}
	}
	if err := r.copyFile(real, names[0]); err != nil {
		return err
	}
	for _, n := range names[1:] {
		r.symlink(strings.TrimPrefix(n, "/"), names[0])
	}
	out, err := exec.Command("ldd", real).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "not a dynamic executable") {
			return nil
		}
		return fmt.Errorf("ldd %s: %v: %s", real, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		var lib string
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			lib = f[2]
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			lib = f[0] // the dynamic loader
		default:
			continue
		}
		inside := strings.TrimPrefix(canonical(lib), "/")
		if _, ok := r.entries[inside]; ok {
			continue
		}
		libReal, err := filepath.EvalSymlinks(lib)
		if err != nil {
			return err
		}
		if err := r.copyFile(libReal, inside); err != nil {
			return err
		}
	}
	return nil
}

// addBusybox installs Debian's static busybox as /usr/bin/busybox with a
// link for every applet that nothing else provides.
func (r *rootfs) addBusybox() error {
	if err := r.addProgram("/bin/busybox", "/usr/bin/busybox"); err != nil {
		return err
	}
	out, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		p := "usr/bin/" + applet
		if _, ok := r.entries[p]; !ok && applet != "busybox" {
			r.symlink(p, "busybox")
		}
	}
	return nil
}

// imageConfig is the part of a Docker image configuration we set.
type imageConfig struct {
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string
}

// writeDockerArchive writes the rootfs as a one-layer image in the
// docker-archive format (manifest.json with RepoTags), which `ctr images
// import` reads.
func (r *rootfs) writeDockerArchive(file, name string, cfg imageConfig) error {
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	names := make([]string, 0, len(r.entries))
	for n := range r.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	epoch := time.Unix(0, 0)
	for _, n := range names {
		h := *r.entries[n]
		h.ModTime, h.Uname, h.Gname, h.Format = epoch, "root", "root", tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			return err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(r.data[n]); err != nil {
				return err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	layerSum := sha256.Sum256(layer.Bytes())
	layerID := hex.EncodeToString(layerSum[:])
	if cfg.Env == nil {
		cfg.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	}
	if cfg.WorkingDir == "" {
		cfg.WorkingDir = "/"
	}
	config, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"created":      epoch.UTC().Format(time.RFC3339),
		"config":       cfg,
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + layerID}},
		"history":      []map[string]string{{"created": epoch.UTC().Format(time.RFC3339), "created_by": "switchyard make conformance"}},
	})
	if err != nil {
		return err
	}
	configSum := sha256.Sum256(config)
	configName := hex.EncodeToString(configSum[:]) + ".json"
	manifest, err := json.Marshal([]map[string]any{{
		"Config": configName, "RepoTags": []string{name}, "Layers": []string{layerID + "/layer.tar"},
	}})
	if err != nil {
		return err
	}

	f, err := os.Create(file)
	if err != nil {
		return err
	}
	defer f.Close()
	aw := tar.NewWriter(f)
	for _, e := range []struct {
		name string
		data []byte
	}{{layerID + "/layer.tar", layer.Bytes()}, {configName, config}, {"manifest.json", manifest}} {
		if err := aw.WriteHeader(&tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.data)), ModTime: epoch}); err != nil {
			return err
		}
		if _, err := io.Copy(aw, bytes.NewReader(e.data)); err != nil {
			return err
		}
	}
	if err := aw.Close(); err != nil {
		return err
	}
	return f.Close()
}

// image is one image archive ready for import.
type image struct {
	Name string
	File string
}

// buildImages writes the archives of every image the run needs into dir:
// pause (our own pause program), agnhost (the module's agnhost with the
// userland its upstream Dockerfile installs: bash, netcat-openbsd, curl,
// wget, iproute2, bind tools, iperf; busybox for the rest) and busybox.
func buildImages(dir, toolsDir, pauseBin string) ([]image, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var images []image
	add := func(name, file string, r *rootfs, cfg imageConfig) error {
		p := filepath.Join(dir, file)
		if err := r.writeDockerArchive(p, name, cfg); err != nil {
			return fmt.Errorf("image %s: %w", name, err)
		}
		images = append(images, image{Name: name, File: p})
		return nil
	}

	pause := newRootfs()
	if err := pause.copyFile(pauseBin, "/pause"); err != nil {
		return nil, err
	}
	if err := add(pauseImage, "pause.tar", pause, imageConfig{Entrypoint: []string{"/pause"}}); err != nil {
		return nil, err
	}

	agn := newRootfs()
	if err := agn.copyFile(filepath.Join(toolsDir, "agnhost"), "/agnhost"); err != nil {
		return nil, err
	}
	agn.symlink("agnhost-2", "agnhost")
	agn.dir("uploads", 0o755)
	for _, p := range []struct {
		host  string
		names []string
	}{
		// Debian's static busybox runs its own applets before PATH from
		// its shell: dash is /bin/sh, so `sh -c "nc ..."` runs the real nc.
		{"/bin/dash", []string{"/usr/bin/dash", "/usr/bin/sh"}},
		{"/bin/bash", nil},
		{"/bin/nc.openbsd", []string{"/usr/bin/nc"}},
		{"/usr/bin/curl", nil},
		// Debian's static busybox's wget crashes (a static glibc's
		// resolver); the specs' wget -q -O - -T 1 works with GNU wget.
		{"/usr/bin/wget", nil},
		{"/bin/ip", nil},
		{"/usr/bin/dig", nil},
		{"/usr/bin/nslookup", nil},
		{"/usr/bin/host", nil},
		{"/usr/bin/iperf", nil},
		{"/usr/bin/nsenter", nil},
	} {
		if err := agn.addProgram(p.host, p.names...); err != nil {
			return nil, fmt.Errorf("agnhost image: %w", err)
		}
	}
	agn.symlink("usr/local/bin/iperf", "/usr/bin/iperf")
	if err := agn.addBusybox(); err != nil {
		return nil, err
	}
	if err := add(agnhostImage, "agnhost.tar", agn, imageConfig{Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"}}); err != nil {
		return nil, err
	}

	bb := newRootfs()
	if err := bb.addBusybox(); err != nil {
		return nil, err
	}
	if err := add(busyboxImage, "busybox.tar", bb, imageConfig{Cmd: []string{"sh"}}); err != nil {
		return nil, err
	}
	return images, nil
}

// The proxies' images, under the names their DaemonSets ask for.
const (
	switchyardImage = "switchyard:dev" // deploy/daemonset.yaml
	kubeProxyImage  = "registry.k8s.io/kube-proxy:v1.36.3"
)

// addIptables installs Debian's iptables userland as a proxy's image
// carries it: both backends (xtables-nft-multi and xtables-legacy-multi
// under every name iptables answers to, iptables itself being nft as on
// Debian), the extension modules they load at run time, conntrack and nft.
func (r *rootfs) addIptables() error {
	for _, multi := range []struct{ prog, backend string }{
		{"/usr/sbin/xtables-nft-multi", "nft"}, {"/usr/sbin/xtables-legacy-multi", "legacy"},
	} {
		if err := r.addProgram(multi.prog); err != nil {
			return err
		}
		base := path.Base(multi.prog)
		for _, fam := range []string{"iptables", "ip6tables"} {
			for _, suffix := range []string{"", "-save", "-restore"} {
				r.symlink("usr/sbin/"+fam+"-"+multi.backend+suffix, base)
				if multi.backend == "nft" {
					r.symlink("usr/sbin/"+fam+suffix, base)
				}
			}
		}
	}
	mods, err := filepath.Glob("/usr/lib/x86_64-linux-gnu/xtables/*.so")
	if err != nil || len(mods) == 0 {
		return fmt.Errorf("no iptables extension modules under /usr/lib/x86_64-linux-gnu/xtables (%v)", err)
	}
	for _, m := range mods {
		if err := r.addProgram(m); err != nil {
			return err
		}
	}
	for _, p := range []string{"/usr/sbin/conntrack", "/usr/sbin/nft", "/bin/ip"} {
		if err := r.addProgram(p); err != nil {
			return err
		}
	}
	for _, f := range []string{"/etc/ethertypes"} {
		if _, err := os.Stat(f); err == nil {
			if err := r.copyFile(f, f); err != nil {
				return err
			}
		}
	}
	return r.addBusybox()
}

// buildProxyImage writes the image of a proxy binary: the binary at
// inside (and as /usr/local/bin/kube-proxy, the command of the kube-proxy
// DaemonSets whose image an operator swaps), Debian's iptables userland,
// busybox for a shell.
func buildProxyImage(dir, name, file, binary, inside string) (image, error) {
	r := newRootfs()
	if err := r.copyFile(binary, inside); err != nil {
		return image{}, err
	}
	if inside != "/usr/local/bin/kube-proxy" {
		// What a kube-proxy DaemonSet whose image was swapped runs.
		r.symlink("usr/local/bin/kube-proxy", path.Base(inside))
	}
	if err := r.addIptables(); err != nil {
		return image{}, fmt.Errorf("image %s: %w", name, err)
	}
	p := filepath.Join(dir, file)
	if err := r.writeDockerArchive(p, name, imageConfig{Entrypoint: []string{inside}}); err != nil {
		return image{}, fmt.Errorf("image %s: %w", name, err)
	}
	return image{Name: name, File: p}, nil
}
