# Sourced by the other scripts: install pipenv if missing, sync the locked environment once,
# and set what every command needs. Afterwards "$PY" is the project's python.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PIPENV_VENV_IN_PROJECT=1 PIPENV_VERBOSITY=-1 PIPENV_YES=1
export HYDRA_FULL_ERROR="${HYDRA_FULL_ERROR:-0}"
export PATH="$(python3 -m site --user-base)/bin:$PATH"  # where pip --user puts pipenv
if ! command -v pipenv >/dev/null 2>&1; then
  echo "installing pipenv ..."
  python3 -m pip install --quiet --user pipenv || python3 -m pip install --quiet pipenv
fi
stamp=".venv/.synced-$(sha256sum Pipfile.lock | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "installing the locked environment into .venv (pipenv sync --dev; a few minutes the first time) ..."
  pipenv sync --dev
  touch "$stamp"
fi
PY="$PWD/.venv/bin/python"

# need_checkpoint <usage> "$@": stop with the usage line unless the first argument is a checkpoint path: an existing
# file (any name: the entry points quote paths Hydra would misread), or anything that is not an override (key=value).
need_checkpoint() {
  local usage="$1"; shift
  if [ $# -lt 1 ] || { [[ "$1" == *=* ]] && [ ! -f "$1" ]; }; then
    echo "usage: $usage" >&2
    exit 2
  fi
}
