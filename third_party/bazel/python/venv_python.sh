#!/bin/sh
# Python interpreter used by Bazel's py_test/py_binary (see BUILD in this folder).
# Bazel runs this from the runfiles tree (maybe inside a sandbox); the runfiles entry is a
# symlink chain back to the source tree, so resolving it finds the repository and its .venv.
# PN_TF_PYTHON (passed with --test_env / --action_env) overrides the choice.
if [ -n "${PN_TF_PYTHON:-}" ]; then
    exec "$PN_TF_PYTHON" "$@"
fi
self=$(readlink -f "$0") || self=$0
repo=${self%/third_party/bazel/python/venv_python.sh}
if [ -x "$repo/.venv/bin/python3" ]; then
    exec "$repo/.venv/bin/python3" "$@"
fi
echo "venv_python.sh: no $repo/.venv/bin/python3; create the venv or set PN_TF_PYTHON" >&2
exit 127
