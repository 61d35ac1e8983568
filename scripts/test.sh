#!/usr/bin/env bash
# The test suite from a fresh clone: set up .venv (scripts/env.sh) and run the tests, two workers.
# Extra arguments go to pytest (e.g. scripts/test.sh -k spectral -x). PYTEST_JOBS=N picks the workers.
set -euo pipefail
source "$(dirname "$0")/env.sh"
say "running: python -m pytest -n ${PYTEST_JOBS:-2} tests $*"
exec "$VPY" -m pytest -n "${PYTEST_JOBS:-2}" tests "$@"
