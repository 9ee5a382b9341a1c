#!/bin/sh
# Makes tests/django/.venv a virtualenv with requirements.txt and the `tidings`
# package (clients/python, installed editable: the app runs the working tree's
# code) installed, and prints the path of its python on stdout (pip's output
# goes to stderr).
#
# Idempotent and safe to run concurrently: a flock on .venv/.lock serializes
# callers, and .venv/.stamp holds the sha256 of the requirements.txt last
# installed (and of clients/python/pyproject.toml), so a changed
# requirements.txt or package metadata is installed again and an unchanged one
# costs one `import`. The e2e harness (tests/src/django.rs) runs it before
# every Django test; CI can run it up front to fail early on a pip problem.
#
# Needs python3 (>= 3.10, with its venv module) and flock (util-linux).
# PYTHON=/path/to/python3 chooses the interpreter the venv is made from.
set -eu
here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
venv="$here/.venv"
req="$here/requirements.txt"
pkg=$(CDPATH='' cd -- "$here/../../clients/python" && pwd)
py="$venv/bin/python"

mkdir -p "$venv"
exec 9>"$venv/.lock"
flock 9

want=$(cat "$req" "$pkg/pyproject.toml" | sha256sum | cut -d' ' -f1)
# The import of tidings also checks that the editable install still points at
# this checkout's clients/python.
if [ "$(cat "$venv/.stamp" 2>/dev/null)" = "$want" ] &&
    "$py" -c 'import django, redis, tidings, sys; sys.exit(not tidings.__file__.startswith(sys.argv[1]))' "$pkg" 2>/dev/null; then
    echo "$py"
    exit 0
fi

if ! "$py" -c '' 2>/dev/null; then
    # Missing or broken (say, its interpreter is gone): make it anew, keeping the lock file.
    find "$venv" -mindepth 1 -maxdepth 1 ! -name .lock -exec rm -rf {} +
    "${PYTHON:-python3}" -m venv "$venv" >&2
fi
"$py" -m pip install --quiet --disable-pip-version-check -r "$req" -e "$pkg" >&2
echo "$want" >"$venv/.stamp"
echo "$py"
