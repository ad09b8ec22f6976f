#!/usr/bin/env bash
# Builds Kubernetes v1.36.3 programs from this module into bin/ (git-ignored):
# what the e2e suite and `make bench` run (kube-apiserver,
# kube-controller-manager, kube-proxy), then what `make conformance` adds
# (kubelet, kube-scheduler, kubectl, agnhost, ginkgo, e2e.test, and CoreDNS
# from its own module). A binary is rebuilt only when missing or older than
# its module's go.mod/go.sum; the first build takes about 15 minutes on 2
# cores (e2e.test alone about 5), later ones are instant thanks to Go's
# build cache.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$PATH:/usr/local/go/bin"
mkdir -p bin
version="v1.36.3"
# The version stamp kubelet and kubectl report (they read it from ldflags).
vpkg="k8s.io/component-base/version"
stamp="-X $vpkg.gitVersion=$version -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=36 -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=2026-01-01T00:00:00Z"

fresh() { [ -x "bin/$1" ] && [ "bin/$1" -nt go.mod ] && [ "bin/$1" -nt go.sum ]; }

build() { # name package [test]
  local name=$1 pkg=$2 kind=${3:-}
  fresh "$name" && return 0
  echo "tools: building $name ($version)..."
  local start; start=$(date +%s)
  if [ "$kind" = test ]; then
    go test -c -trimpath -ldflags "-s -w $stamp" -o "bin/$name.tmp" "$pkg"
  else
    # agnhost runs inside test containers from a minimal root filesystem:
    # a static binary needs nothing from it.
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $stamp" -o "bin/$name.tmp" "$pkg"
  fi
  mv "bin/$name.tmp" "bin/$name"
  echo "tools: $name built in $(( $(date +%s) - start ))s"
}

build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build kube-proxy k8s.io/kubernetes/cmd/kube-proxy
build kubelet k8s.io/kubernetes/cmd/kubelet
build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
build kubectl k8s.io/kubernetes/cmd/kubectl
build agnhost k8s.io/kubernetes/test/images/agnhost
build ginkgo github.com/onsi/ginkgo/v2/ginkgo
build e2e.test k8s.io/kubernetes/test/e2e test
dns_mod=../../conformance/coredns
if ! { [ -x bin/coredns ] && [ bin/coredns -nt $dns_mod/go.mod ] && [ bin/coredns -nt $dns_mod/go.sum ]; }; then
  # CoreDNS, the conformance cluster's DNS, from its own module (it pins
  # its own client-go).
  echo "tools: building coredns (v1.15.0)..."
  start=$(date +%s)
  (cd $dns_mod && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o ../../e2e/tools/bin/coredns.tmp github.com/coredns/coredns)
  mv bin/coredns.tmp bin/coredns
  echo "tools: coredns built in $(( $(date +%s) - start ))s"
fi
