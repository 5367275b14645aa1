#!/usr/bin/env bash
# A real Kubernetes API server for tests: kube-apiserver v1.20.2 built from Debian
# bookworm's `kubernetes` source package (no registry ships a binary), plus Debian's etcd.
#
#   tests/testbed/kube.sh build            build once per machine (cached under $KUBE_CACHE)
#   tests/testbed/kube.sh start DIR [ADDR] start etcd + apiserver; state, certs, logs and a
#                                          kubeconfig (DIR/kubeconfig) go to DIR; ADDR is the
#                                          address to bind (default 127.0.0.1)
#   tests/testbed/kube.sh stop DIR         stop both (by PID) and delete etcd's data
#
# Auth: a CA of its own, TLS serving cert with IP SANs, a static admin token
# (system:masters) in the kubeconfig, client certificates accepted, RBAC on.
set -euo pipefail
KUBE_VERSION=1.20.5+really1.20.2-1.1+deb12u1
KUBE_CACHE=${KUBE_CACHE:-/var/tmp/vipvisor-kube/$KUBE_VERSION}
APISERVER="$KUBE_CACHE/kube-apiserver"

log() { printf '[testbed] %s\n' "$*" >&2; }

add_deb_src() {
  if grep -rqsE '^(deb-src|Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/; then return; fi
  log "adding deb-src entries mirroring the deb ones"
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    sed -E 's/^Types:[[:space:]]*deb[[:space:]]*$/Types: deb-src/' "$f" >"/etc/apt/sources.list.d/vipvisor-src-$(basename "$f")"
  done
  if [ -s /etc/apt/sources.list ]; then
    grep -E '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' >/etc/apt/sources.list.d/vipvisor-src.list || true
  fi
}

build() {
  if [ -x "$APISERVER" ]; then log "kube-apiserver cached at $APISERVER"; return; fi
  export DEBIAN_FRONTEND=noninteractive
  add_deb_src
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends golang-go etcd-server dpkg-dev rsync jq \
    golang-github-modern-go-reflect2-dev openssl >/dev/null
  local work; work=$(mktemp -d /var/tmp/vipvisor-kube-build.XXXXXX)
  trap 'rm -rf "$work"' RETURN
  log "fetching the kubernetes source package ($KUBE_VERSION)"
  (cd "$work" && apt-get source -qq --download-only "kubernetes=$KUBE_VERSION" >/dev/null && dpkg-source -x --no-check ./*.dsc src >/dev/null)
  # The vendored reflect2 1.0.1 crashes on Go >= 1.18 (segfault in mapiterinit on the first
  # JSON map response); Debian's packaged 1.0.2 works.
  rm -rf "$work/src/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$work/src/vendor/github.com/modern-go/reflect2"
  log "building kube-apiserver (3-5 min on 2 cores)"
  (cd "$work/src" && make -s WHAT=cmd/kube-apiserver >/dev/null 2>"$work/build.log") || { tail -30 "$work/build.log" >&2; exit 1; }
  mkdir -p "$KUBE_CACHE"
  cp "$work/src/_output/bin/kube-apiserver" "$APISERVER.tmp" && mv "$APISERVER.tmp" "$APISERVER"
  log "cached $APISERVER"
}

start() {
  local dir=${1:?state dir} addr=${2:-127.0.0.1}
  [ -x "$APISERVER" ] || build
  command -v etcd >/dev/null || apt-get install -y -qq --no-install-recommends etcd-server openssl >/dev/null
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local etcd_port=$((20000 + RANDOM % 20000)) api_port=$((40000 + RANDOM % 20000))
  local data; data=$(mktemp -d /dev/shm/vipvisor-etcd.XXXXXX)
  echo "$data" >"$dir/etcd-data"
  # CA, serving cert (IP SANs), service-account key, admin token.
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=vipvisor-test-ca \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:%s,DNS:localhost\n' "$addr" >"$dir/san.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 2 \
    -extfile "$dir/san.ext" -out "$dir/server.crt" 2>/dev/null
  openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  local token; token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "$token,admin,admin,system:masters" >"$dir/tokens.csv"
  # Three plain users for tests of token-based access (alice, bob, carol: no rights until a
  # test binds them); their tokens in DIR/user-NAME.token.
  local u t
  for u in alice bob carol; do
    t=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    echo "$t,$u,$u,testers" >>"$dir/tokens.csv"
    (umask 077; echo "$t" >"$dir/user-$u.token")
  done
  etcd --data-dir "$data" --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    >"$dir/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"
  "$APISERVER" --etcd-servers "http://127.0.0.1:$etcd_port" --bind-address "$addr" --secure-port "$api_port" \
    --tls-cert-file "$dir/server.crt" --tls-private-key-file "$dir/server.key" --client-ca-file "$dir/ca.crt" \
    --token-auth-file "$dir/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$dir/sa.key" \
    --service-account-signing-key-file "$dir/sa.key" --service-cluster-ip-range 10.96.0.0/16 \
    --disable-admission-plugins ServiceAccount --allow-privileged=false --profiling=false \
    --service-node-port-range 30000-62767 --max-requests-inflight 800 --max-mutating-requests-inflight 400 \
    >"$dir/apiserver.log" 2>&1 &
  echo $! >"$dir/apiserver.pid"
  local server="https://$addr:$api_port"
  for _ in $(seq 1 300); do
    if curl -sk --max-time 1 -H "Authorization: Bearer $token" "$server/readyz" 2>/dev/null | grep -q '^ok$'; then
      cat >"$dir/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: $server
    certificate-authority: $dir/ca.crt
users:
- name: admin
  user:
    token: $token
contexts:
- name: test
  context: {cluster: test, user: admin, namespace: default}
current-context: test
KC
      chmod 600 "$dir/kubeconfig" "$dir/tokens.csv"
      log "apiserver ready at $server (kubeconfig: $dir/kubeconfig)"
      return 0
    fi
    sleep 0.1
  done
  log "apiserver did not become ready"; tail -20 "$dir/apiserver.log" >&2; stop "$dir"; return 1
}

stop() {
  local dir=${1:?state dir}
  for p in apiserver etcd; do
    if [ -f "$dir/$p.pid" ]; then kill "$(cat "$dir/$p.pid")" 2>/dev/null || true; fi
  done
  sleep 0.2
  for p in apiserver etcd; do
    if [ -f "$dir/$p.pid" ]; then kill -9 "$(cat "$dir/$p.pid")" 2>/dev/null || true; rm -f "$dir/$p.pid"; fi
  done
  if [ -f "$dir/etcd-data" ]; then rm -rf "$(cat "$dir/etcd-data")"; rm -f "$dir/etcd-data"; fi
}

case ${1:-} in
  build) build ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: $0 build | start DIR [ADDR] | stop DIR" >&2; exit 2 ;;
esac
