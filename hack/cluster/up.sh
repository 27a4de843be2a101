#!/usr/bin/env bash
# `make cluster`: a real Kubernetes control plane on 127.0.0.1 -- etcd, kube-apiserver and
# kube-controller-manager, with real authentication (client certificates, ServiceAccount tokens),
# RBAC authorization, the default admission plugins and an audit log. No kubelet and no scheduler:
# Pods stay Pending, which is enough for Pod objects, their annotations and every controller that
# owns them. State, ports and logs live in $CLUSTER_DIR (default: <repo>/.cluster); running it again
# while the cluster is up does nothing. Writes $CLUSTER_DIR/kubeconfig (admin) and links the
# binaries into $CLUSTER_DIR/bin.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
dir=${CLUSTER_DIR:-$root/.cluster}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
kc="$dir/kubeconfig"

ready() {
  [ -f "$kc" ] && [ -f "$dir/pids" ] || return 1
  for p in $(cat "$dir/pids"); do kill -0 "$p" 2>/dev/null || return 1; done
  "$dir/bin/kubectl" --kubeconfig "$kc" get --raw /readyz >/dev/null 2>&1
}
if ready; then echo "cluster: already up (KUBECONFIG=$kc)"; exit 0; fi
# Something half-up (a crash, a reboot): start from nothing.
"$here/down.sh" >/dev/null 2>&1 || true
mkdir -p "$dir/pki" "$dir/logs"

bin=$("$here/build.sh")
ln -sfn "$bin" "$dir/bin"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port); kcm_port=$(free_port)
echo "$api_port" > "$dir/api-port"

# --- PKI: one CA; apiserver serving cert; admin and controller-manager client certs; SA keys.
pki="$dir/pki"
ossl() { openssl "$@" >/dev/null 2>&1; }
ossl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=detour-test-ca" -keyout "$pki/ca.key" -out "$pki/ca.crt"
cert() { # name, subject, extfile-content
  ossl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr"
  printf '%s\n' "$3" > "$pki/$1.ext"
  ossl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 30 \
    -extfile "$pki/$1.ext" -out "$pki/$1.crt"
}
cert apiserver "/CN=kube-apiserver" \
  "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth"
cert admin "/O=system:masters/CN=detour-admin" "extendedKeyUsage=clientAuth"
cert kcm "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
ossl genrsa -out "$pki/sa.key" 2048
ossl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub"

kubeconfig() { # file, user cert name
  local k="$dir/bin/kubectl"
  "$k" config --kubeconfig "$1" set-cluster detour --server "https://127.0.0.1:$api_port" \
    --certificate-authority "$pki/ca.crt" --embed-certs >/dev/null
  "$k" config --kubeconfig "$1" set-credentials "$2" --client-certificate "$pki/$2.crt" \
    --client-key "$pki/$2.key" --embed-certs >/dev/null
  "$k" config --kubeconfig "$1" set-context detour --cluster detour --user "$2" >/dev/null
  "$k" config --kubeconfig "$1" use-context detour >/dev/null
}
kubeconfig "$dir/kcm.kubeconfig" kcm
rm -f "$kc.partial"; kubeconfig "$kc.partial" admin

# Audit every request at Metadata level (who, verb, resource, name, decision): the RBAC tests
# read it to list exactly what the operator and the proxy ask of the API server.
cat > "$dir/audit-policy.yaml" <<'POL'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: None
  users: ["system:kube-controller-manager", "system:apiserver"]
- level: None
  userGroups: ["system:serviceaccounts:kube-system"]
- level: Metadata
POL

start() { # name, command...
  local name=$1; shift
  setsid nohup "$@" > "$dir/logs/$name.log" 2>&1 < /dev/null &
  echo $! >> "$dir/pids"
}
: > "$dir/pids"
start etcd "$dir/bin/etcd" --name default --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "default=http://127.0.0.1:$peer_port" --log-level warn --quota-backend-bytes 4294967296
issuer="https://kubernetes.default.svc.cluster.local"
start kube-apiserver "$dir/bin/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
  --cert-dir "$pki" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --service-account-issuer "$issuer" --api-audiences "$issuer" \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --authorization-mode RBAC --anonymous-auth=false \
  --service-cluster-ip-range 10.0.0.0/24 --endpoint-reconciler-type none \
  --audit-policy-file "$dir/audit-policy.yaml" --audit-log-path "$dir/audit.log" \
  --audit-log-format json --audit-log-maxsize 200 --audit-log-maxbackup 1 \
  --profiling=false --v 1
deadline=$(( $(date +%s) + ${CLUSTER_START_TIMEOUT:-120} ))
until "$dir/bin/kubectl" --kubeconfig "$kc.partial" get --raw /readyz >/dev/null 2>&1; do
  for p in $(cat "$dir/pids"); do
    kill -0 "$p" 2>/dev/null || { echo "cluster: a component exited; logs in $dir/logs" >&2; tail -n 5 "$dir"/logs/*.log >&2; exit 1; }
  done
  [ "$(date +%s)" -lt "$deadline" ] || { echo "cluster: /readyz not ready in time; logs in $dir/logs" >&2; exit 1; }
  sleep 0.5
done
# Started once the API server is ready: its bootstrap RBAC roles must exist first.
start kube-controller-manager "$dir/bin/kube-controller-manager" \
  --kubeconfig "$dir/kcm.kubeconfig" --authentication-kubeconfig "$dir/kcm.kubeconfig" \
  --authorization-kubeconfig "$dir/kcm.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$kcm_port" --leader-elect=false \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --use-service-account-credentials \
  --profiling=false --v 1

# The controller manager creates each namespace's `default` ServiceAccount; Pods need it.
until "$dir/bin/kubectl" --kubeconfig "$kc.partial" -n default get serviceaccount default >/dev/null 2>&1; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "cluster: controller manager did not start; logs in $dir/logs" >&2; exit 1; }
  sleep 0.5
done
mv "$kc.partial" "$kc"
echo "cluster: up at https://127.0.0.1:$api_port"
echo "  export KUBECONFIG=$kc PATH=$dir/bin:\$PATH"
