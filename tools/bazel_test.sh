#!/bin/sh
# Run the Bazel Python tests of this repository (Debian bazel-bootstrap 4.2.3, offline).
#   tools/bazel_test.sh                      # bazel test //tests:all
#   tools/bazel_test.sh //tests:test_layers --test_filter=gate
# TFDS_DATA_DIR defaults to ../shared/tensorflow_datasets beside the repository.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd -P)
cd "$repo"
: "${TFDS_DATA_DIR:=$(cd "$repo/.." && pwd -P)/shared/tensorflow_datasets}"
export TFDS_DATA_DIR
targets=
for arg in "$@"; do
    case $arg in
        -*) ;;
        *) targets=yes ;;
    esac
done
if [ -z "$targets" ]; then
    set -- //tests:all "$@"
fi
exec bazel test --test_env=TFDS_DATA_DIR="$TFDS_DATA_DIR" "$@"
