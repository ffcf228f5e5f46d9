#!/usr/bin/env bash
# The device acceptance run in one go, for a machine with an NVIDIA GPU:
#   1. the DCNv2 kernel check (CUDA + torch, no TensorRT; under two minutes),
#   2. the selftest: the gpu suite and one report answering every "unverified on GPU" claim.
# Everything lands in $OUT (default $TMPDIR/edgeseg-device-check): nvidia-smi.txt, kernel-check.json/.log,
# gpu-suite.xml/.log, selftest.json, selftest.md.
#
#   bash tools/device_check.sh [PYTEST_ARGS...]     # e.g. -k "not zoo" to leave the zoo out
#
# SELFTEST_TIMEOUT (seconds, default 300) stops the suite from starting new tests (the quick
# claims run first, the zoo last); a test still running 120 s later is interrupted and the
# report keeps what ran, so the whole script fits in 10 minutes. Exit status: 0 when every
# claim was verified, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-${TMPDIR:-/tmp}/edgeseg-device-check}"
mkdir -p "$out"
{ nvidia-smi || echo "nvidia-smi failed or is missing"; } >"$out/nvidia-smi.txt" 2>&1
head -n 12 "$out/nvidia-smi.txt"
python -m converters.plugins.kernel_check --json "$out/kernel-check.json"
python - "$out" "${SELFTEST_TIMEOUT:-300}" "$@" <<'PY'
import sys

from converters.selftest import run_selftest

out, timeout, pytest_args = sys.argv[1], float(sys.argv[2]), sys.argv[3:]


def say(message: str) -> None:
    print(f"[selftest] {message}", flush=True)


report = run_selftest(out, pytest_args=pytest_args, timeout_s=timeout, say=say)
for claim in report.claims:
    print(f"{claim.id:18} {claim.status:9} {claim.reason[:160]}")
sys.exit(0 if report.ok else 1)
PY
