#!/usr/bin/env bash
# Installs what switchyard's build and tests need on a Debian machine:
# iptables (both backends), iproute2, conntrack, etcd (for the e2e control
# plane), curl, nftables (nft, for cleanup --kube-proxy), procps (sysctl, for
# the test namespaces), and for `make conformance` containerd, runc, the CNI
# plugins, and the programs its test images carry (busybox-static,
# netcat-openbsd, bind9-dnsutils, iperf, wget; util-linux's nsenter starts the
# nodes). Go itself must already be installed (the project's machines have
# it at /usr/local/go).
# Idempotent: it only calls apt-get when something is missing.
set -euo pipefail

need=()
for pair in iptables:iptables-nft-restore iptables:iptables-legacy-restore iproute2:ip conntrack:conntrack etcd-server:etcd curl:curl nftables:nft procps:sysctl \
  containerd:containerd runc:runc containernetworking-plugins:/usr/lib/cni/ptp busybox-static:busybox util-linux:nsenter \
  netcat-openbsd:nc.openbsd bind9-dnsutils:dig iperf:iperf wget:wget; do
  pkg=${pair%%:*} bin=${pair##*:}
  if [[ $bin == /* ]]; then [ -e "$bin" ] || need+=("$pkg"); continue; fi
  command -v "$bin" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  echo "setup: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v go >/dev/null 2>&1 || { echo "setup: go is not installed (need Go 1.26)"; exit 1; }
echo "setup: ok ($(go version | cut -d' ' -f3), $(iptables --version))"
