#!/usr/bin/env bash
# Installs what the chart tests need, from the Go module proxy, into
# <repo>/.data/tools/bin (override: SB_TOOLS_DIR), like infra.sh installs
# nats-server: helm (the real binary the charts are linted and rendered with)
# and promtool (checks and unit-tests the alert rules); and downloads, into
# the Go module cache, the modules whose files the tests validate against:
# Kubernetes' OpenAPI schemas (k8s.io/kubernetes, the oldest and newest
# supported minor) and the Prometheus Operator's CRDs, and those of the
# Tiltfile's Starlark runner (libs/devenv/tilt). Safe to run again: it only
# does what is missing. The first run builds for a few minutes.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd -P)"
TOOLS_DIR="${SB_TOOLS_DIR:-$REPO_ROOT/.data/tools}"
BIN="$TOOLS_DIR/bin"

HELM_VERSION=v3.22.0
HELM_K8S_MINOR=37            # the Kubernetes minor of helm's client-go (helm's Makefile stamps it the same way)
PROMETHEUS_VERSION=v0.316.0  # github.com/prometheus/prometheus (Prometheus 3.x)
# Kept in step with charts/test/support/k8s-schema.ts.
SCHEMA_MODULES=(k8s.io/kubernetes@v1.30.14 k8s.io/kubernetes@v1.37.2 github.com/prometheus-operator/prometheus-operator@v0.85.0)

export PATH="$PATH:/usr/local/go/bin"
log() { printf '[kube-tools] %s\n' "$*"; }
die() { printf '[kube-tools] ERROR: %s\n' "$*" >&2; exit 1; }
command -v go >/dev/null 2>&1 || die "go is needed (libs/devenv/infra/infra.sh installs it)"
mkdir -p "$BIN"

helm_ok() { [ -x "$BIN/helm" ] && [ "$("$BIN/helm" version --template '{{.Version}}' 2>/dev/null)" = "$HELM_VERSION" ]; }
promtool_ok() { [ -x "$BIN/promtool" ] && [ "$(cat "$BIN/.promtool-version" 2>/dev/null)" = "$PROMETHEUS_VERSION" ]; }

build_helm() {
  local ldflags="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$HELM_K8S_MINOR"
  ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$HELM_K8S_MINOR"
  GOBIN="$BIN" CGO_ENABLED=0 GOFLAGS=-buildvcs=false go install -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

build_promtool() {
  GOBIN="$BIN" CGO_ENABLED=0 GOFLAGS=-buildvcs=false go install "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION" \
    && echo "$PROMETHEUS_VERSION" >"$BIN/.promtool-version"
}

jobs=() names=()
if ! helm_ok; then
  log "building helm $HELM_VERSION with go install (first time only; log: $TOOLS_DIR/helm-install.log)"
  build_helm >"$TOOLS_DIR/helm-install.log" 2>&1 & jobs+=($!); names+=(helm)
fi
if ! promtool_ok; then
  log "building promtool $PROMETHEUS_VERSION with go install (first time only; log: $TOOLS_DIR/promtool-install.log)"
  build_promtool >"$TOOLS_DIR/promtool-install.log" 2>&1 & jobs+=($!); names+=(promtool)
fi
(cd "$TOOLS_DIR" && GOFLAGS=-mod=mod go mod download "${SCHEMA_MODULES[@]}") || die "could not download ${SCHEMA_MODULES[*]}"
# The Starlark runner the Tiltfile test uses (libs/devenv/tilt, go.starlark.net).
(cd "$REPO_ROOT/libs/devenv/tilt" && go mod download) || die "could not download the modules of libs/devenv/tilt"
failed=0
for i in "${!jobs[@]}"; do
  if ! wait "${jobs[$i]}"; then
    printf '[kube-tools] %s build failed:\n' "${names[$i]}" >&2
    tail -n 30 "$TOOLS_DIR/${names[$i]}-install.log" >&2
    failed=1
  fi
done
[ "$failed" -eq 0 ] || die "installation failed"
helm_ok || die "helm $HELM_VERSION did not install"
promtool_ok || die "promtool $PROMETHEUS_VERSION did not install"
log "helm $("$BIN/helm" version --template '{{.Version}}'), promtool $PROMETHEUS_VERSION, schemas ${SCHEMA_MODULES[*]}"
