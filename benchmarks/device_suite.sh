#!/bin/sh
# Every speed figure of one GPU in one command (benchmarks/device_suite.py; its --help
# lists the options): ./benchmarks/device_suite.sh, --science, --smoke.
# PYTHON picks the interpreter (default: python3).
cd "$(dirname "$0")/.." || exit 1
exec "${PYTHON:-python3}" benchmarks/device_suite.py "$@"
