#!/usr/bin/env bash
# Runs every benchmark (GEMM, GPT-2-small forward, Llama-7B-shaped bf16, SAE encode/training, tracker API,
# attribution patching with SAEs (forward + backward), the backward's memory on the Llama-7B shape, attribution graphs,
# the corpus scan into a feature database, steered vs plain generation, Gemma 2 / Llama 3.2 forward, Mistral-7B tracker memory)
# against PyTorch (where there is a peer) in the same run.
# As root it first installs the peer: Debian's python3-torch with OpenBLAS (libopenblas0-pthread).
# Needs ~14 GB of disk for the synthetic Llama-7B folder, ~15 GB for Mistral-7B bf16 and ~6 GB for the truncated
# Gemma 2 / Llama 3.2 f32 folders (each written once into bench/models/).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $(id -u) -eq 0 ]] && { ! /usr/bin/python3 -c 'import torch' 2>/dev/null || ! dpkg -s libopenblas0-pthread >/dev/null 2>&1; }; then
  apt-get update -qq && apt-get install -y -qq -o DPkg::Lock::Timeout=600 python3-torch libopenblas0-pthread >/dev/null
fi
bench() { dotnet run -c Release --project "$root/bench/FeatureLens.Bench" -- "$@"; }
# every run starts with the machine (CPU, AVX-512 width as reported and measured, FMA peak) and ends with one summary
# table of the headline ratios each benchmark records into this file
export FL_BENCH_SUMMARY="${FL_BENCH_SUMMARY:-$(mktemp /tmp/featurelens-bench-XXXXXX.jsonl)}"
bench machine
status=0
case "${1:-all}" in
  # the tracker runs as the server does (`featurelens serve` uses the server GC, see FeatureLens.Cli.csproj)
  tracker) DOTNET_gcServer=1 bench "$@" || status=$? ;;
  all)
    for b in gemm forward llama7b sae tracker attribution grad7b graph scan steering cluster forward-arch track-mistral; do
      if [[ $b == tracker ]]; then DOTNET_gcServer=1 bench "$b" || status=$?; else bench "$b" || status=$?; fi
    done ;;
  *) bench "$@" || status=$? ;;
esac
bench summary
exit "$status"
