#!/usr/bin/env bash
# Builds the real control plane (etcd, kube-apiserver, kube-controller-manager, kubectl) and helm
# from the Go modules pinned in go.mod, once per machine: the binaries live in
# ~/.cache/detour/k8s-<version>-<hash of the pins>/bin and are rebuilt only when the pins change.
# Prints that bin directory. Nothing built here is committed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k8s=$(awk '$1=="k8s.io/kubernetes"{print $2; exit}' "$here/go.mod")
helmv=$(awk '$1=="helm.sh/helm/v4"{print $2; exit}' "$here/go.mod")
etcdv=$(awk '$1=="go.etcd.io/etcd/server/v3"{print $2; exit}' "$here/go.mod")
pins=$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -c1-12)
out="${DETOUR_CACHE:-$HOME/.cache/detour}/k8s-$k8s-$pins"
tools="etcd kube-apiserver kube-controller-manager kubectl helm"
ok=1; for t in $tools; do [ -x "$out/bin/$t" ] || ok=0; done
if [ "$ok" = 1 ]; then echo "$out/bin"; exit 0; fi

command -v go >/dev/null || { echo "build.sh: Go is needed to build the control plane (go 1.26+)" >&2; exit 1; }
start=$(date +%s)
tmp="$out/bin.partial"; rm -rf "$tmp"; mkdir -p "$tmp"
minor=$(echo "$k8s" | cut -d. -f2)
# Version stamps as the release build sets them: helm checks the chart's kubeVersion against the
# server's gitVersion, and an unstamped apiserver says v0.0.0-master.
kv="-X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=1"
kv="$kv -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
kv="$kv -X k8s.io/client-go/pkg/version.gitVersion=$k8s -X k8s.io/client-go/pkg/version.gitMajor=1"
kv="$kv -X k8s.io/client-go/pkg/version.gitMinor=$minor"
cd "$here"
export GOFLAGS=-buildvcs=false
echo "build.sh: building Kubernetes $k8s, etcd $etcdv, helm $helmv into $out (first time: ~7 min on 2 cores with empty Go caches)" >&2
go build -ldflags "-s -w $kv" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
go build -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
go build -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$helmv $kv" -o "$tmp/helm" helm.sh/helm/v4/cmd/helm
rm -rf "$out/bin"; mv "$tmp" "$out/bin"
echo "build.sh: built in $(( $(date +%s) - start )) s" >&2
echo "$out/bin"
