#!/usr/bin/env bash
# Command-line behaviour of the Lua binding discipline: a call with too many arguments or a
# bad index ends the run with a non-zero exit and one clear message; reductions along a
# dimension give the same bytes for any thread count.
# Usage: tests/cli_bindings_test.sh QFORGE_BIN WORKDIR   (run from the repository root)
set -u
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.sh" "$@"  # sets QF (absolute) and WORK (emptied)

# ---- a call with one argument too many fails the run, naming the function ----
cat >"$WORK/extra.lua" <<'LUA'
local W = qf.tensor{{1, 2, 3}, {4, 5, 6}}
print(W:sum(2, false, "extra"))
LUA
run extra run "$WORK/extra.lua" out="$WORK/run_extra"
expect_fail "extra argument"
expect_in "extra argument" stderr "extra.lua:2: bad argument #3 to 'sum' (at most 2 arguments expected, got 3)"

cat >"$WORK/index.lua" <<'LUA'
local W = qf.tensor{{1, 2, 3}, {4, 5, 6}}
print(W[1][1])
LUA
run index run "$WORK/index.lua" out="$WORK/run_index"
expect_fail "numeric index"
expect_in "numeric index" stderr "index.lua:2: qforge.Tensor cannot be indexed with [1]; use t:get(i, j) / t:select(1, i)"

# ---- reductions along a dim: identical bytes with 1 and 3 threads ----
cat >"$WORK/reduce.lua" <<'LUA'
local o = qf.options{ file = "" }
local X = qf.rng(3):randn{700, 300}
local v, i = X:t():max(2)
qf.save_tensors(o.file, { s1 = X:sum(1), s2 = X:sum(2), m = X:mean(1, true), n = X:t():norm(2, 1),
                          v = v, i = i:to("f32") })
LUA
run reduce1 run "$WORK/reduce.lua" threads=1 file="$WORK/r1.safetensors" out="$WORK/run_r1"
expect_rc "reductions, 1 thread" 0
run reduce3 run "$WORK/reduce.lua" threads=3 file="$WORK/r3.safetensors" out="$WORK/run_r3"
expect_rc "reductions, 3 threads" 0
if [ -s "$WORK/r1.safetensors" ] && cmp -s "$WORK/r1.safetensors" "$WORK/r3.safetensors"; then ok
else bad "reductions differ between 1 and 3 threads"; fi

finish cli_bindings
