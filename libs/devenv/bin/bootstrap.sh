#!/usr/bin/env bash
# Installs what the workspace needs on a fresh machine with Node 20 and builds
# it: pnpm (pinned), the locked dependencies, the generated contracts and
# every package. Safe to run again; it only does what is missing or stale.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd -P)"
cd "$REPO_ROOT"

PNPM_VERSION="$(node -p "require('./package.json').packageManager.split('@')[1]")"
node -e 'const [major, minor] = process.versions.node.split(".").map(Number); if (major < 20 || (major === 20 && minor < 19)) { console.error(`Node.js >= 20.19 is needed, this is ${process.version}`); process.exit(1); }'

if ! command -v pnpm >/dev/null 2>&1 || [ "$(pnpm --version)" != "$PNPM_VERSION" ]; then
  echo "[bootstrap] installing pnpm $PNPM_VERSION"
  npm install --global --no-fund --no-audit "pnpm@$PNPM_VERSION" >/dev/null
fi

echo "[bootstrap] installing dependencies (frozen lockfile)"
pnpm install --frozen-lockfile --reporter=silent
echo "[bootstrap] building"
pnpm run --silent build
