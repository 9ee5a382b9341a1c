#!/usr/bin/env bash
# The Python package's CI step (called by .ci/run after the cargo tests, which
# build target/debug/tidings): a venv, the package with its test extras,
# mypy --strict, pytest against the real gateway, redis-server and Django, then the sdist
# and wheel with `python -m build`.
#
# TIDINGS_BIN chooses another gateway binary; PYTHON another interpreter
# (3.10 or newer).
set -euo pipefail
here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
cd "$here"

venv="$here/.venv"
if ! "$venv/bin/python" -c '' 2>/dev/null; then
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv "$venv"
fi
py="$venv/bin/python"
"$py" -m pip install --quiet --disable-pip-version-check -e ".[test]" build

# The package is typed (py.typed): keep it clean under mypy --strict.
"$py" -m mypy --strict --no-error-summary src/tidings

# pytest exits 5 when it collected no tests: that is a failure here too.
set +e
"$py" -m pytest -q -p no:cacheprovider tests
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "clients/python: pytest collected no tests" >&2
  exit 1
elif [ "$rc" -ne 0 ]; then
  exit "$rc"
fi

rm -rf dist
"$py" -m build --outdir dist . >/dev/null
ls dist
