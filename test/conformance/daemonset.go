package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/switchyard-proxy/switchyard/test/kubeadm"
	"github.com/switchyard-proxy/switchyard/test/wait"
)

// The proxy as operators run it: a DaemonSet of host-network, privileged
// pods authenticated as their ServiceAccount, from an image the nodes
// hold. switchyard's is deploy/daemonset.yaml itself, with its ConfigMap
// pointed at this cluster's apiserver; kube-proxy's is the one kubeadm
// writes (a KubeProxyConfiguration and a kubeconfig on the pod's
// ServiceAccount token, both in a ConfigMap). The third way is the
// drop-in: kubeadm's kube-proxy DaemonSet, unchanged but for its image,
// running switchyard (--proxy-as=kubeadm).
//
// Both sets of pods carry k8s-app=kube-proxy: the label of the DaemonSet a
// replacement stands in for, and the one the spec that restarts the
// proxy ("should work after restarting kube-proxy") looks for.

// switchyardDaemonSet is deploy/daemonset.yaml for this cluster.
func switchyardDaemonSet(repo, apiHost, apiPort string) (string, error) {
	b, err := os.ReadFile(filepath.Join(repo, "deploy", "daemonset.yaml"))
	if err != nil {
		return "", err
	}
	y := string(b)
	for _, r := range []struct{ old, new string }{
		{`KUBERNETES_SERVICE_HOST: "kind-control-plane"`, fmt.Sprintf("KUBERNETES_SERVICE_HOST: %q", apiHost)},
		{`KUBERNETES_SERVICE_PORT: "6443"`, fmt.Sprintf("KUBERNETES_SERVICE_PORT: %q", apiPort)},
		{"k8s-app: switchyard", "k8s-app: kube-proxy"},
	} {
		if !strings.Contains(y, r.old) {
			return "", fmt.Errorf("deploy/daemonset.yaml no longer holds %q", r.old)
		}
		y = strings.ReplaceAll(y, r.old, r.new)
	}
	return y, nil
}

// kubeProxyDaemonSet is kube-proxy's DaemonSet as kubeadm deploys it, for
// the baseline, or (image switchyard's) as an operator who swaps the image
// of that DaemonSet runs switchyard: same command, same config file. The
// KubeProxyConfiguration is kubeadm's, every field written out as kube-proxy
// v1.36.3's --write-config-to writes them, with one change: conntrack
// maxPerCore 0, as the conntrack sysctls are not writable in a network
// namespace.
func kubeProxyDaemonSet(apiHost, apiPort, image string) string {
	// kubeadm's file, but for conntrack.maxPerCore: 0 (the conntrack
	// sysctls cannot be written from a node's network namespace).
	proxyConfig := strings.Replace(kubeadm.ProxyConfig("/var/lib/kube-proxy/kubeconfig.conf", clusterCIDR), "  maxPerCore: null", "  maxPerCore: 0", 1)
	return fmt.Sprintf(`apiVersion: v1
kind: ServiceAccount
metadata: {name: kube-proxy, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: kubeadm:node-proxier}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:node-proxier}
subjects: [{kind: ServiceAccount, name: kube-proxy, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: kube-proxy, namespace: kube-system, labels: {app: kube-proxy}}
data:
  config.conf: |-
%[3]s
  kubeconfig.conf: |-
    apiVersion: v1
    kind: Config
    clusters:
    - cluster:
        certificate-authority: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
        server: https://%[1]s:%[2]s
      name: default
    contexts:
    - context:
        cluster: default
        namespace: default
        user: default
      name: default
    current-context: default
    users:
    - name: default
      user:
        tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: kube-proxy
  namespace: kube-system
  labels: {k8s-app: kube-proxy}
spec:
  selector:
    matchLabels: {k8s-app: kube-proxy}
  updateStrategy: {type: RollingUpdate}
  template:
    metadata:
      labels: {k8s-app: kube-proxy}
    spec:
      serviceAccountName: kube-proxy
      hostNetwork: true
      priorityClassName: system-node-critical
      tolerations: [{operator: Exists}]
      nodeSelector: {kubernetes.io/os: linux}
      containers:
      - name: kube-proxy
        image: %[4]s
        imagePullPolicy: IfNotPresent
        command:
        - /usr/local/bin/kube-proxy
        - --config=/var/lib/kube-proxy/config.conf
        - --hostname-override=$(NODE_NAME)
        env:
        - name: NODE_NAME
          valueFrom:
            fieldRef: {fieldPath: spec.nodeName}
        securityContext: {privileged: true}
        volumeMounts:
        - {name: kube-proxy, mountPath: /var/lib/kube-proxy}
        - {name: xtables-lock, mountPath: /run/xtables.lock}
        - {name: lib-modules, mountPath: /lib/modules, readOnly: true}
      volumes:
      - name: kube-proxy
        configMap: {name: kube-proxy}
      - name: xtables-lock
        hostPath: {path: /run/xtables.lock, type: FileOrCreate}
      - name: lib-modules
        hostPath: {path: /lib/modules}
`, apiHost, apiPort, indent(proxyConfig, "    "), image)
}

// indent prefixes every line of s.
func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n"+prefix)
}

// applyManifest applies a multi-document manifest with kubectl, as an
// operator would.
func applyManifest(kubectl, kubeconfig, manifest string) error {
	cmd := exec.Command(kubectl, "--kubeconfig="+kubeconfig, "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(manifest)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("kubectl apply: %v: %s", err, out.String())
	}
	return nil
}

// waitProxyPods waits until every node runs a Ready proxy pod.
func waitProxyPods(client kubernetes.Interface, nodes int, timeout time.Duration) error {
	var last string
	if wait.Poll(timeout, func() bool {
		pods, err := client.CoreV1().Pods("kube-system").List(context.Background(), metav1.ListOptions{LabelSelector: "k8s-app=kube-proxy"})
		if err != nil {
			last = err.Error()
			return false
		}
		ready := map[string]bool{}
		var states []string
		for _, p := range pods.Items {
			for _, c := range p.Status.Conditions {
				if c.Type == v1.PodReady && c.Status == v1.ConditionTrue {
					ready[p.Spec.NodeName] = true
				}
			}
			for _, cs := range p.Status.ContainerStatuses {
				if cs.State.Waiting != nil {
					states = append(states, fmt.Sprintf("%s: %s %s", p.Name, cs.State.Waiting.Reason, cs.State.Waiting.Message))
				}
				if cs.LastTerminationState.Terminated != nil {
					states = append(states, fmt.Sprintf("%s: last exit %d %s", p.Name, cs.LastTerminationState.Terminated.ExitCode, cs.LastTerminationState.Terminated.Reason))
				}
			}
		}
		last = fmt.Sprintf("%d of %d nodes have a Ready proxy pod %v", len(ready), nodes, states)
		return len(ready) == nodes
	}) {
		return nil
	}
	return fmt.Errorf("the proxy DaemonSet's pods: %s after %v", last, timeout)
}

// saveProxyLogs copies the proxy pods' logs (current and previous
// containers) into logDir before teardown removes the nodes' pod logs.
func saveProxyLogs(client kubernetes.Interface, logDir, proxy string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pods, err := client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=kube-proxy"})
	if err != nil {
		fmt.Fprintf(os.Stderr, "conformance: saving the proxy's logs: %v\n", err)
		return
	}
	for _, p := range pods.Items {
		for _, previous := range []bool{true, false} {
			b, err := client.CoreV1().Pods("kube-system").GetLogs(p.Name, &v1.PodLogOptions{Previous: previous}).DoRaw(ctx)
			if err != nil {
				continue // no previous container
			}
			name := fmt.Sprintf("%s-%s-%s.log", proxy, p.Spec.NodeName, p.Name)
			if previous {
				name = fmt.Sprintf("%s-%s-%s.previous.log", proxy, p.Spec.NodeName, p.Name)
			}
			_ = os.WriteFile(filepath.Join(logDir, name), b, 0o644)
		}
	}
}
