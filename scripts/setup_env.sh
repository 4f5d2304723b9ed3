#!/usr/bin/env bash
# Create a project-local venv with a torch / fbgemm-gpu / torchrec triplet that imports and runs:
# the CUDA build when an NVIDIA GPU is visible, the CPU build otherwise. Idempotent.
set -euo pipefail
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"
cd "$(dirname "$0")/.."

if [[ -n "${MLET_DEVICE:-}" ]]; then
  flavour="$MLET_DEVICE"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  flavour=cuda
else
  flavour=cpu
fi
echo "[setup] venv $VENV, $flavour build of torch/fbgemm-gpu/torchrec"

[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" -r "requirements/$flavour.txt"
grep -v '^torchrec==' requirements/common.txt | "${PIP[@]}" -r /dev/stdin
# torchrec last and without its declared deps (fbgemm-gpu is already there in the right flavour):
# installed before the others, pip's conflict check printed "ERROR: ... torchrec 1.8.0 requires
# fbgemm-gpu, which is not installed" on CPU (fbgemm-gpu-cpu is another name to pip); --no-deps
# installs run no such check. The import check below decides.
"${PIP[@]}" --no-deps "$(grep '^torchrec==' requirements/common.txt)"
"${PIP[@]}" --no-deps -e .

"$VENV/bin/python" - <<'PY'
import torch, torchrec, fbgemm_gpu  # noqa: F401
import mlet_dist
print(f"[setup] ok: torch {torch.__version__}, torchrec {torchrec.__version__}, "
      f"cuda available: {torch.cuda.is_available()}")
PY
touch "$VENV/.installed-$flavour"
