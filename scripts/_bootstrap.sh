# Sourced by scripts/start and scripts/test: find Python 3.11+ and uv, installing
# uv into ./.tools when it is not on PATH. Needs only Python 3.11+ with venv/pip.
set -eu

find_python() {
    for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11 python; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    echo "error: Python 3.11 or newer is required (set PYTHON=/path/to/python3.11)" >&2
    return 1
}

PYTHON_BIN=$(find_python)

if command -v uv >/dev/null 2>&1; then
    UV=$(command -v uv)
elif [ -x .tools/bin/uv ]; then
    UV=.tools/bin/uv
else
    echo "uv not found: installing it into ./.tools (one time)" >&2
    "$PYTHON_BIN" -m venv .tools
    .tools/bin/python -m pip install --quiet --disable-pip-version-check "uv>=0.5"
    UV=.tools/bin/uv
fi
export UV_PYTHON="$PYTHON_BIN"
# Never fetch a Python build from the internet: use the one found above.
export UV_PYTHON_DOWNLOADS=never
