#!/usr/bin/env bash
# The main job from a fresh clone: set up .venv (scripts/env.sh) and run the quick benchmark.
# Extra arguments go to `python -m fastgan bench` (e.g. scripts/bench.sh --ops 2c; without --quick
# use `.venv/bin/python -m fastgan bench` for the default preset).
set -euo pipefail
source "$(dirname "$0")/env.sh"
say "running: python -m fastgan bench --quick $*"
exec "$VPY" -m fastgan bench --quick "$@"
