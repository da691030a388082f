#!/usr/bin/env bash
# The main job: set up, build, run the default recipe (recipes/eval.lua) on the default model.
# Extra key=value arguments go to the recipe, e.g. scripts/run.sh model=PATH text=FILE seqlen=256
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
cd "$root"
exec "$root/build/qforge" run recipes/eval.lua "$@"
