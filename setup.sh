#!/usr/bin/env bash
# Set up decov-node on a fresh Debian/Ubuntu machine: a virtual environment in .venv with the
# package, its pixel decoders and the CPU build of torch. With --test, also the real DICOM
# peers the test suite talks to (dcmtk, Orthanc; dciodvfy comes with the test extras) and
# dcmjs, the viewers' DICOM library, from the npm registry (Node.js from Debian if missing).
# Idempotent: run it again after a pull.
set -euo pipefail
cd "$(dirname "$0")"

with_tests=0
[[ "${1:-}" == "--test" ]] && with_tests=1

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

packages=()
command -v python3 >/dev/null || packages+=(python3)
python3 -c "import venv, ensurepip" 2>/dev/null || packages+=(python3-venv)
if [[ $with_tests -eq 1 ]]; then
    [[ -x /usr/bin/storescu ]] || packages+=(dcmtk)
    command -v Orthanc >/dev/null || packages+=(orthanc)
    command -v npm >/dev/null || packages+=(nodejs npm)
    [[ -x /usr/bin/systemd-analyze ]] || packages+=(systemd)  # checks the unit's hardening
fi
if [[ ${#packages[@]} -gt 0 ]]; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
    # Debian's orthanc package starts a system-wide service; the tests start their own.
    if [[ " ${packages[*]} " == *" orthanc "* ]] && command -v systemctl >/dev/null; then
        as_root systemctl disable --now orthanc >/dev/null 2>&1 || true
    fi
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11 or newer is needed" >&2; exit 1; }
[[ -x .venv/bin/python ]] || python3 -m venv .venv
extras=""
[[ $with_tests -eq 1 ]] && extras="[test]"
# constraints.txt pins torch to the CPU build (an unpinned torch pulls several GB of CUDA packages).
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".${extras}"
if [[ $with_tests -eq 1 ]]; then
    # The versions recorded in tests/js/package-lock.json, into tests/js/node_modules.
    npm ci --prefix tests/js --no-audit --no-fund --loglevel=error >/dev/null
fi
echo "decov-node is set up in $(pwd)/.venv" >&2
