#!/usr/bin/env bash
# Real-size GPU numbers in one run: VAE encode beside diffusers' own, LoRA and full train steps (time, peak
# memory beside the memory plan, MFU), 50-step generation and eval metrics; one JSON under $OUT.
# All the work is benchmarks/device.py (see its docstring); this only finds Python and the packages.
#
#   bash benchmarks/device.sh              # on the GPU machine: writes $OUT/device.json
#   bash benchmarks/device.sh --dry-run    # here, on the CPU with tiny models, in well under a minute
#
# The GPU machines' image has torch, transformers, accelerate, peft, safetensors, pyarrow, rich, pyyaml and
# opencv but not diffusers or pydantic. Carry them as wheels in .whl/ (see the device README), e.g.
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     diffusers==0.42.1 pydantic==2.12.5 pydantic-core==2.41.5 annotated-types==0.7.0 \
#     typing-inspection==0.4.2 importlib-metadata==8.7.0
# and run with carry [".whl"]: they are installed into /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
exec "$PY" benchmarks/device.py --out "${OUT:-device-out}" "$@"
