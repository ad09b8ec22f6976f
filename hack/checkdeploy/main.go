// Command checkdeploy validates deploy/daemonset.yaml for `make lint`: it
// decodes every document with the apimachinery decoder (unknown fields are
// errors) and checks what an operator relies on: least-privilege RBAC, host
// networking, privilege, the xtables lock and modules mounts, tolerating
// every taint, node-critical priority, the node name from the downward API,
// a rolling update by maxUnavailable, and the probes on kube-proxy's port.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

func main() {
	path := "deploy/daemonset.yaml"
	if len(os.Args) > 1 {
		path = os.Args[1]
	}
	if errs := check(path); len(errs) > 0 {
		for _, e := range errs {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, e)
		}
		os.Exit(1)
	}
}

func check(path string) []error {
	data, err := os.ReadFile(path)
	if err != nil {
		return []error{err}
	}
	dec := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	var ds *appsv1.DaemonSet
	var role *rbacv1.ClusterRole
	var binding *rbacv1.ClusterRoleBinding
	var sa *v1.ServiceAccount
	for doc := 1; ; doc++ {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return append(errs, err)
		}
		if len(bytes.TrimSpace(raw)) == 0 {
			continue
		}
		obj, _, err := dec.Decode(raw, nil, nil)
		if err != nil {
			fail("document %d: %v", doc, err)
			continue
		}
		switch o := obj.(type) {
		case *appsv1.DaemonSet:
			ds = o
		case *rbacv1.ClusterRole:
			role = o
		case *rbacv1.ClusterRoleBinding:
			binding = o
		case *v1.ServiceAccount:
			sa = o
		}
	}
	if ds == nil || role == nil || binding == nil || sa == nil {
		return append(errs, fmt.Errorf("want a DaemonSet, ServiceAccount, ClusterRole and ClusterRoleBinding"))
	}
	if ds.Namespace != "kube-system" || sa.Namespace != "kube-system" {
		fail("DaemonSet and ServiceAccount must be in kube-system")
	}
	allowed := map[string][]string{"services": {"get", "list", "watch"}, "endpointslices": {"get", "list", "watch"},
		"nodes": {"get", "list", "watch"}, "events": {"create", "patch"}}
	for _, rule := range role.Rules {
		for _, res := range rule.Resources {
			want, ok := allowed[res]
			if !ok {
				fail("ClusterRole grants %s, which switchyard does not need", res)
				continue
			}
			for _, verb := range rule.Verbs {
				if !slices.Contains(want, verb) {
					fail("ClusterRole grants %s on %s; only %v are needed", verb, res, want)
				}
			}
		}
	}
	if binding.RoleRef.Name != role.Name || len(binding.Subjects) != 1 || binding.Subjects[0].Name != sa.Name {
		fail("ClusterRoleBinding must bind ClusterRole %s to ServiceAccount %s", role.Name, sa.Name)
	}
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork {
		fail("hostNetwork must be true")
	}
	if spec.ServiceAccountName != sa.Name {
		fail("serviceAccountName must be %s", sa.Name)
	}
	if spec.PriorityClassName != "system-node-critical" {
		fail("priorityClassName must be system-node-critical")
	}
	if !slices.ContainsFunc(spec.Tolerations, func(t v1.Toleration) bool { return t.Operator == v1.TolerationOpExists && t.Key == "" }) {
		fail("must tolerate every taint (operator: Exists with no key)")
	}
	if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType || ds.Spec.UpdateStrategy.RollingUpdate == nil ||
		ds.Spec.UpdateStrategy.RollingUpdate.MaxUnavailable == nil {
		fail("updateStrategy must be RollingUpdate by maxUnavailable")
	}
	if len(spec.Containers) != 1 {
		return append(errs, fmt.Errorf("want one container"))
	}
	c := spec.Containers[0]
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		fail("the container must be privileged")
	}
	mounts := map[string]bool{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = true
	}
	for _, p := range []string{"/run/xtables.lock", "/lib/modules"} {
		if !mounts[p] {
			fail("%s must be mounted from the host", p)
		}
	}
	nodeFromDownwardAPI := false
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName" {
			nodeFromDownwardAPI = slices.Contains(append(c.Command, c.Args...), "--hostname-override=$("+e.Name+")")
		}
	}
	if !nodeFromDownwardAPI {
		fail("--hostname-override must come from spec.nodeName through the downward API")
	}
	probe := func(p *v1.Probe, path, name string) {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != path || p.HTTPGet.Port.IntValue() != 10256 {
			fail("%s probe must GET %s on port 10256", name, path)
		}
	}
	probe(c.LivenessProbe, "/livez", "liveness")
	probe(c.ReadinessProbe, "/healthz", "readiness")
	if len(c.EnvFrom) == 0 && !strings.Contains(strings.Join(append(c.Command, c.Args...), " "), "--master") {
		fail("the apiserver address must come from a ConfigMap (envFrom) or --master")
	}
	return errs
}
