package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-proxy/switchyard/test/netns"
	"github.com/switchyard-proxy/switchyard/test/wait"
)

// TestImagesRunInContainerd builds the run's images, imports them into a
// real containerd of its own and runs the agnhost image's userland with
// runc through ctr: the programs the specs exec (sh, nc -v, curl, dig,
// the agnhost binary) must start from the image's root filesystem alone.
func TestImagesRunInContainerd(t *testing.T) {
	netns.RequireRoot(t, "containerd", "ctr", "runc", "ldd", "busybox", "nc.openbsd", "dig")
	tools, err := filepath.Abs("../e2e/tools/bin")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(tools, "agnhost")); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set and agnhost is not built (make e2e-tools): %v", err)
		}
		t.Skip("agnhost is not built: run make e2e-tools")
	}
	dir := t.TempDir()
	pause := filepath.Join(dir, "pause")
	if out, err := exec.Command("go", "build", "-o", pause, "./pause").CombinedOutput(); err != nil {
		t.Fatalf("building pause: %v: %s", err, out)
	}
	imgs, err := buildImages(filepath.Join(dir, "images"), tools, pause)
	if err != nil {
		t.Fatal(err)
	}
	swy := filepath.Join(dir, "switchyard")
	if out, err := exec.Command("go", "build", "-o", swy, "../../cmd/switchyard").CombinedOutput(); err != nil {
		t.Fatalf("building switchyard: %v: %s", err, out)
	}
	proxyImg, err := buildProxyImage(filepath.Join(dir, "images"), switchyardImage, "proxy.tar", swy, "/usr/local/bin/switchyard")
	if err != nil {
		t.Fatal(err)
	}
	imgs = append(imgs, proxyImg)

	sock := filepath.Join(dir, "containerd.sock")
	config := filepath.Join(dir, "containerd.toml")
	if err := os.WriteFile(config, []byte(`version = 2
root = "`+dir+`/root"
state = "`+dir+`/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "`+sock+`"
`), 0o644); err != nil {
		t.Fatal(err)
	}
	before := snapshotHost()
	cd := exec.Command("containerd", "--config", config, "--log-level", "warn")
	if err := cd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cd.Process.Kill()
		_ = cd.Wait()
		unmountUnder(dir)
		removeAdded(before) // the shims' sockets, runc's state
	})
	if !wait.Poll(20*time.Second, func() bool {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		t.Fatal("containerd's socket did not appear")
	}
	ctr := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("ctr", append([]string{"--address", sock, "--namespace", "test"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("ctr %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	for _, img := range imgs {
		ctr("images", "import", img.File)
	}
	list := ctr("images", "ls", "-q")
	for _, name := range []string{pauseImage, agnhostImage, busyboxImage, "docker.io/library/" + switchyardImage} {
		if !strings.Contains(list, name) {
			t.Errorf("image %s not imported; have:\n%s", name, list)
		}
	}
	// Every program the specs call, run from the image (host network: no
	// network is needed, only that each starts and prints its usage).
	out := ctr("run", "--rm", "--net-host", agnhostImage, "probe", "/bin/sh", "-c",
		"wget --version | head -1; nc -h 2>&1 | head -1; readlink -f /bin/sh; curl --version | head -1; dig -v 2>&1; ip -V; bash --version | head -1; /agnhost --help | grep -m1 netexec; nslookup -version 2>&1 | head -1")
	for _, want := range []string{"GNU Wget", "OpenBSD netcat", "curl ", "DiG ", "ip utility", "GNU bash", "netexec", "nslookup 9"} {
		if !strings.Contains(out, want) {
			t.Errorf("agnhost image: %q missing from the programs' output:\n%s", want, out)
		}
	}
	if out := ctr("run", "--rm", "--net-host", busyboxImage, "probe2", "sh", "-c", "echo hello from busybox"); !strings.Contains(out, "hello from busybox") {
		t.Errorf("busybox image: %s", out)
	}
	// The proxy's image: its binary, both iptables backends with the
	// extensions a proxy's rules load (checked by restoring such rules in
	// the container's own, empty network namespace), conntrack and nft.
	rules := `*nat
:PROBE - [0:0]
-A PROBE -m comment --comment probe -m statistic --mode random --probability 0.5 -j RETURN
-A PROBE -m recent --rcheck --seconds 10 --reap --name probe --rsource -j RETURN
-A PROBE -p tcp -m tcp --dport 80 -m addrtype --dst-type LOCAL -j DNAT --to-destination 10.0.0.1:80
-A PROBE -m mark --mark 0x4000/0x4000 -j MASQUERADE
COMMIT
`
	out = ctr("run", "--rm", "--privileged", "docker.io/library/"+switchyardImage, "probe3", "/bin/sh", "-c",
		"/usr/local/bin/switchyard --version; iptables --version; iptables-legacy --version; conntrack --version; nft --version; "+
			"printf '"+rules+"' | iptables-nft-restore --test && echo nft-restore-ok; printf '"+rules+"' | iptables-legacy-restore --test && echo legacy-restore-ok")
	for _, want := range []string{"switchyard", "(nf_tables)", "(legacy)", "conntrack v", "nftables v", "nft-restore-ok", "legacy-restore-ok"} {
		if !strings.Contains(out, want) {
			t.Errorf("switchyard image: %q missing from the output:\n%s", want, out)
		}
	}
}
