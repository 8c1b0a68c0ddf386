#!/usr/bin/env bash
# Create .venv and install mtad with the cpu (ONNX Runtime), train and dev extras. Safe to re-run: it skips the
# install when pyproject.toml has not changed since the last successful one.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MTAD_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
# The MQTT tests run a real broker, Debian's mosquitto (they skip, saying why, where it is absent).
if ! PATH="$PATH:/usr/sbin" command -v mosquitto >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  echo "setup: installing mosquitto (MQTT broker for the tests)" >&2
  { $SUDO apt-get install -y -q mosquitto || { $SUDO apt-get update -q && $SUDO apt-get install -y -q mosquitto; }; } >"${TMPDIR:-/tmp}/mtad-mosquitto.log" 2>&1 \
    || echo "setup: could not install mosquitto (see ${TMPDIR:-/tmp}/mtad-mosquitto.log); the MQTT tests will be skipped" >&2
fi
stamp="$VENV/.mtad-installed"
want="$(sha256sum pyproject.toml | cut -c1-64)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setup: installing mtad into $VENV (first time: ~2 min)" >&2
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build. 2.13.0 is a CPU build
# that pip finds on local disk here; on a GPU workstation install your CUDA torch first
# (any torch >= 2.2 that is already installed is kept).
if ! "$PY" -W ignore -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "torch==${MTAD_TORCH_VERSION:-2.13.0}" >"$VENV/install-torch.log" 2>&1 || { cat "$VENV/install-torch.log" >&2; exit 1; }
  "$PY" -W ignore -c "import torch" || { echo "setup: torch install failed" >&2; exit 1; }
fi
"$PY" -m pip install -q -e ".[cpu,train,dev]" >"$VENV/install.log" 2>&1 || { cat "$VENV/install.log" >&2; exit 1; }
"$PY" -c "import mtad.edge_runtime, mtad.train, onnxruntime, polygraphy, sklearn, librosa" || { echo "setup: install failed" >&2; exit 1; }
echo "$want" > "$stamp"
