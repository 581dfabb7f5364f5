#!/usr/bin/env bash
# The README's test command: install, then run the fast test suite on the shared data.
#   bash tools/test.sh            fast tests (what CI runs)
#   bash tools/test.sh -m slow    the slow ones
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export TFDS_DATA_DIR="${TFDS_DATA_DIR:-$(cd .. && pwd)/shared/tensorflow_datasets}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
if [ "$#" -eq 0 ]; then
  set -- -m "not slow"
fi
exec .venv/bin/python -m pytest -q --durations=15 "$@"
