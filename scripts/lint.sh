#!/usr/bin/env bash
# The checks CI runs before the tests (README: Development checks):
#   dotnet build -c Release: the .NET analyzers (AnalysisLevel=latest-recommended, exceptions in .editorconfig)
#     with TreatWarningsAsErrors, so any finding fails it;
#   dotnet format --verify-no-changes: whitespace and style as .editorconfig describes them (and the analyzer
#     findings that have a code fix);
#   scripts/lint-js.sh, when present: ESLint over the web app's scripts.
# Prints what fails; the exit status is the number of checks that failed (0: all passed).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
failed=0
start=$SECONDS
dotnet restore FeatureLens.slnx --nologo -v quiet >/dev/null || { echo "lint: dotnet restore failed"; exit 1; }   # counts as one failed check
# the analyzers: a Release build of the solution (TreatWarningsAsErrors; the tests' build reuses it)
if dotnet build FeatureLens.slnx -c Release --no-restore --nologo -v quiet -clp:ErrorsOnly; then
  echo "lint: analyzers (dotnet build -c Release) passed"
else
  echo "lint: analyzers (dotnet build -c Release) FAILED"
  failed=$((failed + 1))
fi
if dotnet format FeatureLens.slnx --verify-no-changes --no-restore; then
  echo "lint: dotnet format --verify-no-changes passed"
else
  echo "lint: dotnet format --verify-no-changes FAILED (run 'dotnet format FeatureLens.slnx' to fix whitespace/style; analyzer findings are fixed by hand)"
  failed=$((failed + 1))
fi
if [[ -f scripts/lint-js.sh ]]; then
  if bash scripts/lint-js.sh; then echo "lint: scripts/lint-js.sh passed"
  else echo "lint: scripts/lint-js.sh FAILED"; failed=$((failed + 1)); fi
fi
echo "lint: $failed check(s) failed ($((SECONDS - start)) s)"
exit "$failed"
