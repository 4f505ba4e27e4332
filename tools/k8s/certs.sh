#!/usr/bin/env bash
# Make every certificate, key and kubeconfig a single-node test cluster needs, with
# openssl only (no cfssl, no kubeadm). Idempotent: an existing file is kept.
#
# Usage: certs.sh DIR [NODE_NAME] [NODE_IP] [SERVICE_IP] [APISERVER_URL]
#   DIR            output directory (created, mode 0700)
#   NODE_NAME      kubelet node name (default: ibrain-node)
#   NODE_IP        node IP put in the kubelet serving cert (default: none; add the
#                  test's own dummy/bridge address here, never a loopback-only plan:
#                  the kubelet refuses a loopback --node-ip)
#   SERVICE_IP     first IP of --service-cluster-ip-range (default: 10.96.0.1)
#   APISERVER_URL  written into the kubeconfigs (default: https://127.0.0.1:6443)
#
# Keys: ECDSA P-256 for all TLS certs (fast to make), RSA 2048 for service accounts
# (sa.key signs tokens: --service-account-signing-key-file; sa.pub verifies them:
# --service-account-key-file, and kube-controller-manager --service-account-private-key-file).
set -euo pipefail

DIR=${1:?usage: certs.sh DIR [NODE_NAME] [NODE_IP] [SERVICE_IP] [APISERVER_URL]}
NODE=${2:-ibrain-node}
NODE_IP=${3:-}
SVC_IP=${4:-10.96.0.1}
URL=${5:-https://127.0.0.1:6443}
DAYS=${CERT_DAYS:-3650}

mkdir -p "$DIR"
chmod 700 "$DIR"
cd "$DIR"
umask 077

key() { # key NAME: ECDSA P-256 private key in PKCS#8 PEM
  [[ -s $1.key ]] || openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key"
}

# --- cluster CA -------------------------------------------------------------------
key ca
[[ -s ca.crt ]] || openssl req -x509 -new -key ca.key -sha256 -days "$DAYS" \
  -subj "/CN=ibrain-test-kubernetes-ca" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
  -addext "subjectKeyIdentifier=hash" \
  -out ca.crt

# leaf NAME SUBJECT EKU [SAN]: a certificate signed by ca.crt
leaf() {
  local name=$1 subj=$2 eku=$3 san=${4:-}
  [[ -s $name.crt ]] && return 0
  key "$name"
  openssl req -new -key "$name.key" -subj "$subj" -out "$name.csr"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    echo "authorityKeyIdentifier=keyid"
    echo "subjectKeyIdentifier=hash"
    if [[ -n $san ]]; then echo "subjectAltName=$san"; fi
  } > "$name.ext"
  # -set_serial with 16 random bytes (positive: Go's x509 rejects negative serials)
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -sha256 -days "$DAYS" \
    -set_serial "0x$(openssl rand -hex 16 | sed 's/^./1/')" \
    -extfile "$name.ext" -out "$name.crt"
  rm -f "$name.csr" "$name.ext"
}

# --- kube-apiserver serving cert (--tls-cert-file / --tls-private-key-file) ---------
ASAN="IP:127.0.0.1,IP:${SVC_IP},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
if [[ -n $NODE_IP ]]; then ASAN="${ASAN},IP:${NODE_IP}"; fi
leaf apiserver "/CN=kube-apiserver" serverAuth "$ASAN"

# --- client certs (CN = user, O = group) --------------------------------------------
leaf admin                 "/O=system:masters/CN=kubernetes-admin"            clientAuth
leaf kube-controller-manager "/CN=system:kube-controller-manager"             clientAuth
leaf kube-scheduler        "/CN=system:kube-scheduler"                        clientAuth
leaf kube-proxy            "/CN=system:kube-proxy"                            clientAuth
# apiserver -> kubelet (logs/exec/port-forward): --kubelet-client-certificate/-key
leaf apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
# kubelet -> apiserver: the Node authorizer and NodeRestriction need exactly this form
leaf kubelet-client        "/O=system:nodes/CN=system:node:${NODE}"           clientAuth

# --- kubelet serving cert (tlsCertFile / tlsPrivateKeyFile in the kubelet config) ---
KSAN="DNS:${NODE},DNS:localhost,IP:127.0.0.1"
if [[ -n $NODE_IP ]]; then KSAN="${KSAN},IP:${NODE_IP}"; fi
leaf kubelet-serving "/CN=${NODE}" serverAuth "$KSAN"

# --- service-account key pair -------------------------------------------------------
[[ -s sa.key ]] || openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key
[[ -s sa.pub ]] || openssl pkey -in sa.key -pubout -out sa.pub

# --- kubeconfigs (certs embedded; no kubectl needed) --------------------------------
b64() { base64 -w0 < "$1"; }
kubeconfig() { # kubeconfig FILE CERTNAME
  [[ -s $1 ]] && return 0
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ibrain-test
  cluster:
    server: ${URL}
    certificate-authority-data: $(b64 ca.crt)
users:
- name: $2
  user:
    client-certificate-data: $(b64 "$2.crt")
    client-key-data: $(b64 "$2.key")
contexts:
- name: default
  context:
    cluster: ibrain-test
    user: $2
current-context: default
EOF
}
kubeconfig admin.kubeconfig admin
kubeconfig kube-controller-manager.kubeconfig kube-controller-manager
kubeconfig kube-scheduler.kubeconfig kube-scheduler
kubeconfig kube-proxy.kubeconfig kube-proxy
kubeconfig kubelet.kubeconfig kubelet-client

# --- self-check -----------------------------------------------------------------------
openssl verify -CAfile ca.crt -purpose sslserver apiserver.crt kubelet-serving.crt >/dev/null
openssl verify -CAfile ca.crt -purpose sslclient admin.crt kube-controller-manager.crt \
  kube-scheduler.crt kube-proxy.crt apiserver-kubelet-client.crt kubelet-client.crt >/dev/null
echo "certs ready in $DIR" >&2
