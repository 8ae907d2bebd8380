#!/usr/bin/env bash
# Lints the web page's JavaScript (src/FeatureLens.Web/wwwroot, not the bundles in wwwroot/lib) with ESLint, using
# src/FeatureLens.Web/eslint.config.mjs. Installs the npm packages first when ESLint is missing (the build installs
# only the browser bundles). Exits non-zero when ESLint reports a problem or cannot run.
set -euo pipefail
web="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/src/FeatureLens.Web"
cd "$web"
if [[ ! -x node_modules/.bin/eslint || ! -d node_modules/@eslint/js || ! -d node_modules/globals ]]; then
  echo "lint-js: installing ESLint (npm install in src/FeatureLens.Web)"
  npm install --no-audit --no-fund --silent
fi
code=0
node_modules/.bin/eslint --max-warnings 0 wwwroot || code=$?
case $code in
  0) echo "lint-js: OK (ESLint $(node_modules/.bin/eslint --version) on src/FeatureLens.Web/wwwroot)" ;;
  1) echo "lint-js: FAILED: ESLint found the problems listed above in src/FeatureLens.Web/wwwroot (rules: src/FeatureLens.Web/eslint.config.mjs)" >&2 ;;
  *) echo "lint-js: FAILED: ESLint could not run (exit code $code)" >&2 ;;
esac
exit $code
