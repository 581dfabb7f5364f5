"""Entry point for Bazel py_test targets: run pytest on the files given as arguments.

Usage (from tests/BUILD): bazel_pytest_main.py tests/test_x.py [extra pytest args...]
Honours Bazel's XML_OUTPUT_FILE (JUnit report) and TESTBRIDGE_TEST_ONLY (--test_filter -> -k).
"""

import os
import sys

import pytest


def main(argv):
    args = list(argv) + ["-q", "-p", "no:cacheprovider"]
    xml_output = os.environ.get("XML_OUTPUT_FILE")
    if xml_output:
        args.append("--junitxml=" + xml_output)
    test_filter = os.environ.get("TESTBRIDGE_TEST_ONLY")
    if test_filter:
        args += ["-k", test_filter]
    return int(pytest.main(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
