# switchyard: a kube-proxy replacement that programs Services with iptables.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
export PATH := $(PATH):/usr/local/go/bin:/usr/sbin:/sbin

.PHONY: all setup build test lint unit integration e2e e2e-tools conformance conformance-ci run golden image fuzz bench clean

all: build

## setup: install the packages the tests need (iptables, iproute2, conntrack)
setup:
	./hack/setup.sh

## build: build bin/switchyard
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/switchyard ./cmd/switchyard

## test: everything CI runs: setup, lint, unit, real-iptables and e2e tests, upstream's [Conformance] Services specs
test: setup lint unit integration e2e conformance-ci

## lint: golangci-lint v2 (pinned in hack/lint: gofmt, govet, staticcheck, unused, errcheck, ineffassign, gocritic;
## .golangci.yml) on the main module and hack/tools, the kind config (kind's own types), the workflow (actionlint)
## and the DaemonSet manifest
GOLANGCI_LINT := bin/golangci-lint
$(GOLANGCI_LINT): hack/lint/go.mod hack/lint/go.sum
	cd hack/lint && $(GO) build -o ../../$(GOLANGCI_LINT) github.com/golangci/golangci-lint/v2/cmd/golangci-lint

lint: $(GOLANGCI_LINT)
	$(GOLANGCI_LINT) run ./...
	cd hack/tools && ../../$(GOLANGCI_LINT) run --config ../../.golangci.yml ./...
	cd hack/tools && $(GO) run ./kindconfig ../../test/e2e/kind/cluster.yaml
	cd hack/tools && $(GO) run github.com/rhysd/actionlint/cmd/actionlint ../../.github/workflows/e2e-kind.yaml
	$(GO) run ./hack/checkdeploy deploy/daemonset.yaml

## unit: unit tests (no root needed)
unit:
	$(GO) test -count=1 -race ./pkg/... ./cmd/... ./test/bench/...

## integration: real iptables (both backends) and real packets in network namespaces (root)
integration:
	$(GO) test -count=1 -timeout 10m ./test/integration/...

## run: start a local cluster (real control plane, two netns nodes running switchyard, a demo Service) in the foreground; Ctrl-C tears it down
run: setup build e2e-tools
	$(GO) build -o bin/localcluster ./test/e2e/localcluster
	./bin/localcluster --repo . --switchyard bin/switchyard --tools test/e2e/tools/bin --logs _output/local

## e2e-tools: build kube-apiserver, kube-controller-manager, kube-proxy, kubelet, kube-scheduler, kubectl, agnhost,
## ginkgo, e2e.test (v1.36.3) and CoreDNS (cached)
e2e-tools:
	./test/e2e/tools/build.sh

## e2e: the local cluster suite (root): real control plane, netns nodes, real packets
e2e: e2e-tools
	$(GO) test -count=1 -timeout 30m ./test/e2e/...

## conformance: upstream's e2e.test (FOCUS, default [sig-network] Services; SKIP) on a real cluster of kubelet nodes
## (root). PROXY=kube-proxy runs upstream kube-proxy v1.36.3 (iptables mode) in place of switchyard: the baseline.
## NODES (default 3: one spec needs three), PROCS (ginkgo's parallel processes, default 4), PROXY_AS (daemonset:
## the proxy's own DaemonSet with a locally built image; kubeadm: kubeadm's kube-proxy DaemonSet with the proxy's
## image swapped in; process: a process in each node's namespaces).
FOCUS ?= \[sig-network\] Services
SKIP ?=
PROXY ?= switchyard
PROCS ?= 4
NODES ?= 3
PROXY_AS ?= daemonset
conformance: setup build e2e-tools
	CGO_ENABLED=0 $(GO) build -o bin/pause ./test/conformance/pause
	$(GO) build -o bin/conformance ./test/conformance
	./bin/conformance --repo . --switchyard bin/switchyard --tools test/e2e/tools/bin --pause bin/pause \
		--proxy '$(PROXY)' --focus '$(FOCUS)' --skip '$(SKIP)' --procs $(PROCS) --nodes $(NODES) --proxy-as $(PROXY_AS) \
		--logs _output/conformance --reports artifacts/conformance

## conformance-ci: what make test runs of it: the images' own test, then the 15 [Conformance] specs of
## [sig-network] Services against switchyard
conformance-ci: setup build e2e-tools
	$(GO) test -count=1 ./test/conformance/...
	$(MAKE) conformance FOCUS='\[sig-network\] Services .*\[Conformance\]' SKIP= PROXY=switchyard

## fuzz: run each fuzz target for FUZZTIME (default 30s); not part of make test (their seeds are)
FUZZTIME ?= 30s
fuzz:
	$(GO) test ./pkg/proxier -run '^$$' -fuzz '^FuzzRender$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/proxier -run '^$$' -fuzz '^FuzzRenderFiles$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/iptables -run '^$$' -fuzz '^FuzzParseSave$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/iptables -run '^$$' -fuzz '^FuzzTrace$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/proxier -run '^$$' -fuzz '^FuzzDispatchTree$$' -fuzztime $(FUZZTIME)

## bench: Go benchmarks, then switchyard against upstream kube-proxy (iptables and nftables modes) at 1,000 and
## 10,000 Services, endpoints spread over 50 nodes, on both backends (root; about 90 minutes; not part of make test). BENCH_FLAGS passes options, e.g. -sizes 1000 -backends nft
BENCH_FLAGS ?=
bench: setup build e2e-tools
	$(GO) test -run '^$$' -bench . -benchmem -count 1 ./pkg/proxier
	$(GO) test -run '^$$' -bench Memory -benchtime 1x ./pkg/watch
	$(GO) test -run '^$$' -bench 'DaemonSync|DaemonNewService' -benchmem -count 1 ./pkg/watch
	$(GO) build -o bin/bench ./test/bench
	./bin/bench --repo . --switchyard bin/switchyard --tools test/e2e/tools/bin --out results --logs _output/bench $(BENCH_FLAGS)

## golden: rewrite the golden restore text after an intended change
golden:
	$(GO) test ./pkg/proxier -run TestGolden -update

## image: build the container image (needs a container engine; there is none on the project's CI machines)
image:
	@docker info >/dev/null 2>&1 || { echo "make image: no container engine reachable (docker info fails); build on a host with Docker"; exit 1; }
	docker build --build-arg VERSION=$(VERSION) -t switchyard:$(VERSION) .

clean:
	rm -rf bin
