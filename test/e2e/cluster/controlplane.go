package cluster

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/switchyard-proxy/switchyard/test/wait"
)

// Tokens of the static token file: the admin (system:masters) and
// switchyard's own identity, a ServiceAccount name so the RBAC rules of
// deploy/daemonset.yaml apply to it unchanged.
const (
	AdminToken = "switchyard-e2e-admin-token"
	ProxyToken = "switchyard-e2e-proxy-token"
	ProxyUser  = "system:serviceaccount:kube-system:switchyard"

	ServiceCIDR  = "10.96.0.0/16"
	ServiceCIDR6 = "fd00:96::/112"
)

// ControlPlane is etcd, kube-apiserver and kube-controller-manager running
// as local processes.
type ControlPlane struct {
	Dir    string
	Server string // https://IP:PORT
	// AdminKubeconfig and ProxyKubeconfig are kubeconfig files for the two
	// identities.
	AdminKubeconfig string
	ProxyKubeconfig string
	procs           []*Process
}

// ControlPlaneOptions says where things are.
type ControlPlaneOptions struct {
	// BindIP is the address the apiserver serves on; nodes must reach it.
	BindIP string
	// ToolsDir holds kube-apiserver and kube-controller-manager.
	ToolsDir string
	// LogDir receives each component's log.
	LogDir string
	// Dir is where the control plane's own directory (etcd's data,
	// certificates, keys, kubeconfigs) is made; the default temporary
	// directory when empty.
	Dir string
	// Kubelets names the nodes real kubelets will run as. When set, the
	// control plane is the whole one a kubelet cluster needs: a static
	// token per node (system:node:NAME in system:nodes) with the Node
	// authorizer, the ServiceAccount admission plugin and token controller,
	// every controller of kube-controller-manager, kube-scheduler, and the
	// apiserver reaching kubelets by their InternalIP (exec, logs).
	Kubelets []string
}

// NodeToken is the static token of the kubelet of node name.
func NodeToken(name string) string { return "switchyard-e2e-kubelet-" + name }

func freePort(ip string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// StartControlPlane starts the three components and waits until the
// apiserver is ready. Everything is stopped at the owner's cleanup.
func StartControlPlane(t *Owner, o ControlPlaneOptions) *ControlPlane {
	dir, err := os.MkdirTemp(o.Dir, "switchyard-cp")
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cp := &ControlPlane{Dir: dir}
	t.Cleanup(cp.stop)

	etcdClient, err1 := freePort("127.0.0.1")
	etcdPeer, err2 := freePort("127.0.0.1")
	apiPort, err3 := freePort(o.BindIP)
	for _, err := range []error{err1, err2, err3} {
		if err != nil {
			t.Fatalf("finding free ports: %v", err)
		}
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdClient)
	cp.start(t, "etcd", o.LogDir, exec.Command("etcd",
		"--name=e2e", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls=http://127.0.0.1:"+strconv.Itoa(etcdPeer),
		"--initial-advertise-peer-urls=http://127.0.0.1:"+strconv.Itoa(etcdPeer),
		"--initial-cluster=e2e=http://127.0.0.1:"+strconv.Itoa(etcdPeer),
		"--unsafe-no-fsync", "--log-level=warn"))

	keyFile := filepath.Join(dir, "sa.key")
	if err := writeRSAKey(keyFile); err != nil {
		t.Fatalf("%v", err)
	}
	tokens := filepath.Join(dir, "tokens.csv")
	tokenLines := fmt.Sprintf("%s,admin,admin,\"system:masters\"\n%s,%s,switchyard,\"system:serviceaccounts,system:serviceaccounts:kube-system\"\n",
		AdminToken, ProxyToken, ProxyUser)
	for _, n := range o.Kubelets {
		tokenLines += fmt.Sprintf("%s,system:node:%s,kubelet-%s,\"system:nodes\"\n", NodeToken(n), n, n)
	}
	if err := os.WriteFile(tokens, []byte(tokenLines), 0o600); err != nil {
		t.Fatalf("%v", err)
	}
	// Without kubelets there are no pods to mount tokens into, and the
	// suite's objects need no more than RBAC.
	authz := []string{"--authorization-mode=RBAC", "--disable-admission-plugins=ServiceAccount"}
	controllers := "endpointslice,endpointslicemirroring,namespace,garbagecollector"
	if len(o.Kubelets) > 0 {
		authz = []string{"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
			"--kubelet-preferred-address-types=InternalIP"}
		controllers = "*"
	}
	cp.Server = "https://" + net.JoinHostPort(o.BindIP, strconv.Itoa(apiPort))
	cp.start(t, "kube-apiserver", o.LogDir, exec.Command(filepath.Join(o.ToolsDir, "kube-apiserver"), append(authz,
		"--etcd-servers="+etcdURL,
		"--service-cluster-ip-range="+ServiceCIDR+","+ServiceCIDR6,
		"--bind-address="+o.BindIP, "--advertise-address="+o.BindIP,
		"--secure-port="+strconv.Itoa(apiPort),
		"--cert-dir="+filepath.Join(dir, "certs"),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+keyFile,
		"--service-account-signing-key-file="+keyFile,
		"--token-auth-file="+tokens,
		"--allow-privileged=true",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--endpoint-reconciler-type=lease",
		"-v=1")...))

	cp.AdminKubeconfig = filepath.Join(dir, "admin.kubeconfig")
	cp.ProxyKubeconfig = filepath.Join(dir, "proxy.kubeconfig")
	for path, token := range map[string]string{cp.AdminKubeconfig: AdminToken, cp.ProxyKubeconfig: ProxyToken} {
		if err := os.WriteFile(path, []byte(Kubeconfig(cp.Server, token)), 0o600); err != nil {
			t.Fatalf("%v", err)
		}
	}
	if err := cp.waitReady(90 * time.Second); err != nil {
		t.Fatalf("kube-apiserver did not become ready: %v (log: %s)", err, filepath.Join(o.LogDir, "kube-apiserver.log"))
	}

	kcm := []string{"--kubeconfig=" + cp.AdminKubeconfig,
		"--controllers=" + controllers,
		"--leader-elect=false",
		"--secure-port=0",
		"--concurrent-service-endpoint-syncs=10",
		"-v=1"}
	if len(o.Kubelets) > 0 {
		// The token controller signs ServiceAccount tokens; the root CA
		// publisher gives every namespace kube-root-ca.crt (the apiserver's
		// self-signed serving certificate), which each pod's projected token
		// volume needs.
		kcm = append(kcm, "--service-account-private-key-file="+keyFile,
			"--root-ca-file="+filepath.Join(dir, "certs", "apiserver.crt"))
	}
	cp.start(t, "kube-controller-manager", o.LogDir, exec.Command(filepath.Join(o.ToolsDir, "kube-controller-manager"), kcm...))
	if len(o.Kubelets) > 0 {
		cp.start(t, "kube-scheduler", o.LogDir, exec.Command(filepath.Join(o.ToolsDir, "kube-scheduler"),
			"--kubeconfig="+cp.AdminKubeconfig, "--leader-elect=false", "--secure-port=0", "-v=1"))
	}
	return cp
}

func (cp *ControlPlane) start(t *Owner, name, logDir string, cmd *exec.Cmd) {
	p, err := StartProcess(name, cmd, filepath.Join(logDir, name+".log"), nil)
	if err != nil {
		t.Fatalf("%v", err)
	}
	cp.procs = append(cp.procs, p)
}

func (cp *ControlPlane) stop() {
	for i := len(cp.procs) - 1; i >= 0; i-- {
		_ = cp.procs[i].Stop(10 * time.Second)
	}
}

// Check reports a component that has died.
func (cp *ControlPlane) Check() error {
	for _, p := range cp.procs {
		if done, err := p.Exited(); done {
			return fmt.Errorf("%s exited (%v); see %s", p.Name, err, p.LogPath)
		}
	}
	return nil
}

func (cp *ControlPlane) waitReady(timeout time.Duration) error {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	var last error
	ok := wait.Poll(timeout, func() bool {
		if err := cp.Check(); err != nil {
			last = err
			return true
		}
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, cp.Server+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+AdminToken)
		resp, err := client.Do(req)
		if err != nil {
			last = err
			return false
		}
		resp.Body.Close()
		last = fmt.Errorf("/readyz: %s", resp.Status)
		if resp.StatusCode == http.StatusOK {
			last = nil
			return true
		}
		return false
	})
	if !ok || last != nil {
		return last
	}
	return nil
}

// Kubeconfig is a kubeconfig file for server (TLS unverified) with a bearer
// token.
func Kubeconfig(server, token string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: %s
    insecure-skip-tls-verify: true
users:
- name: e2e
  user:
    token: %s
contexts:
- name: e2e
  context: {cluster: e2e, user: e2e}
current-context: e2e
`, server, token)
}

func writeRSAKey(path string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	return os.WriteFile(path, data, 0o600)
}
