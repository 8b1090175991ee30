#!/usr/bin/env bash
# The newcomer's entry point. It makes .venv, installs katkit with its test tools, then:
#   ./dev.sh demo     the main job end to end (Temporal dev server + worker, left running, + a sample repo through DEV and PROD)
#   ./dev.sh test     the whole test suite (what CI runs)
#   ./dev.sh typecheck  mypy --strict on katkit/, workflows/, activities/, starter/ and worker.py (CI runs it too)
#   ./dev.sh bench    the benchmarks (the Docker one when an engine answers)
#   ./dev.sh chaos    the chaos tests with their long variants (a 5 min server outage, a 60 s frozen worker)
#   ./dev.sh ARGS     any katkit command, e.g. ./dev.sh status RUN
set -euo pipefail
# how the user called this script, for the commands katkit prints (it runs from this script's folder)
case $0 in */*) KATKIT_PROG=$0 ;; *) KATKIT_PROG=./$0 ;; esac
export KATKIT_PROG
cd "$(dirname "$0")"
py=${PYTHON:-python3}
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "dev.sh: katkit needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
stamp=.venv/.katkit-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "dev.sh: installing katkit and its dependencies into .venv ..." >&2
  .venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
  touch "$stamp"
fi
cmd=${1:-demo}
[ $# -gt 0 ] && shift
case "$cmd" in
  demo) exec .venv/bin/katkit demo "$@" ;;
  test) exec .venv/bin/python -m pytest "$@" ;;
  typecheck) exec .venv/bin/python -m mypy katkit workflows activities starter worker.py "$@" ;;
  bench)
    .venv/bin/python bench/bench_local.py "$@"
    .venv/bin/python bench/bench_gate.py
    .venv/bin/python bench/bench_cancel.py
    .venv/bin/python bench/bench_cache.py
    .venv/bin/python bench/bench_pipeline.py
    if docker info >/dev/null 2>&1; then .venv/bin/python bench/bench_docker.py
    else echo "dev.sh: no Docker engine: skipped bench/bench_docker.py (see README, Docker)" >&2; fi ;;
  chaos) KATKIT_CHAOS_LONG=1 exec .venv/bin/python -m pytest tests/test_chaos.py "$@" ;;
  *) exec .venv/bin/katkit "$cmd" "$@" ;;
esac
