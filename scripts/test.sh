#!/usr/bin/env bash
# The test command: set up, build, run every test (doctest binaries, Lua tests, CLI tests).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
cd "$root/build"
ctest --output-on-failure -j"$(nproc)"
