#!/usr/bin/env bash
# Run the whole test suite (installs the environment first if needed). Extra arguments go to pytest.
source "$(dirname "$0")/_env.sh"
exec "$PY" -m pytest tests "$@"
