#!/bin/sh
# GPU measurements in one go (engine batch 1 vs batches in fp16, the service under load,
# the GPU parity test), one table, under 10 minutes: see bench/gpu.py.
cd "$(dirname "$0")/.." && exec .venv/bin/python -m bench.gpu "$@"
