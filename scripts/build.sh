#!/usr/bin/env bash
# Configures and builds qforge (Release) into build/. Usage: scripts/build.sh [extra cmake args]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release "$@" >&2
cmake --build "$root/build" -j"$(nproc)" >&2
