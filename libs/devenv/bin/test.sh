#!/usr/bin/env bash
# README's second command: every test. Contracts first (buf lint, buf breaking
# against main), then unit, integration (real PostgreSQL, Redis, NATS, Kafka)
# and end-to-end tests (real service processes, two gateways, real sockets),
# with the Helm charts rendered by the real helm (charts/test).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd -P)"
cd "$REPO_ROOT"

bash libs/devenv/bin/bootstrap.sh
bash libs/devenv/infra/infra.sh up

echo "[test] buf lint"
(cd proto && node_modules/.bin/buf lint)
echo "[test] buf breaking"
node proto/scripts/breaking.js

echo "[test] type-check the tests (ts-jest only transpiles them)"
node_modules/.bin/tsc -p tsconfig.test.json --noEmit

echo "[test] helm, promtool and the Kubernetes schemas for the chart tests"
bash libs/devenv/bin/kube-tools.sh

echo "[test] jest"
# --forceExit: the verdict is known once the last file ends; a client a failed
# test left open must not hold the run until CI's timeout (the service
# processes themselves are killed per file: libs/devenv/src/jest-environment.ts).
SB_SKIP_INFRA=1 exec node_modules/.bin/jest --ci --forceExit "$@"
