#!/usr/bin/env bash
# device= through the qforge command (docs/device.md): unknown names and unavailable backends are
# one clear usage error (exit 2) before any work; a run on thrust-omp records its device, gives
# the CPU backend's perplexity, and its rerun keeps the device; qf.device()/qf.devices().
# Usage: tests/cli_device_test.sh QFORGE_BIN WORKDIR   (run from the repository root)
set -u
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.sh" "$@"  # sets QF (absolute) and WORK (emptied)

run unknown run recipes/eval.lua device=gpu out="$WORK/r_unknown"
expect_rc "device=gpu" 2
expect_in "device=gpu" stderr "unknown device 'gpu' (expected cpu, thrust-omp or cuda)"
[ ! -e "$WORK/r_unknown" ] && ok || bad "device=gpu made a run directory"

# cuda: either usable (a GPU machine) or refused with the reason
run cuda run recipes/eval.lua device=cuda max_windows=1 out="$WORK/r_cuda"
if [ "$rc" -ne 0 ]; then
  expect_rc "device=cuda without a GPU" 2
  grep -qE "no CUDA GPU is present|built without CUDA" "$WORK/stderr" && ok || bad "device=cuda: no reason given"
fi

cat >"$WORK/dev.lua" <<'LUA'
local names = {}
for _, d in ipairs(qf.devices()) do names[#names + 1] = d.name .. "=" .. tostring(d.built) end
print("device " .. qf.device() .. " of " .. table.concat(names, " "))
local ok, err = pcall(qf.options, { device = "cpu" })
print(ok and "declared" or ("refused: " .. tostring(err)))
LUA
run lua run "$WORK/dev.lua" device=thrust-omp out="$WORK/r_lua"
if grep -q "device thrust-omp of cpu=true thrust-omp=true" "$WORK/stdout"; then
  ok
  expect_in "a recipe cannot declare device" stdout "reserved by the runner"
  for d in cpu thrust-omp; do
    run "eval_$d" run recipes/eval.lua device=$d max_windows=4 out="$WORK/r_$d"
    expect_rc "eval on $d" 0
  done
  expect_file_has "run.json records the device" "$WORK/r_thrust-omp/run.json" '"device": "thrust-omp"'
  a=$(json_value "$WORK/r_cpu/results.json" ppl)
  b=$(json_value "$WORK/r_thrust-omp/results.json" ppl)
  awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a > 0 && d / a < 1e-6) }' && ok ||
    bad "perplexity cpu $a vs thrust-omp $b"
  run rerun rerun "$WORK/r_thrust-omp" out="$WORK/r_rerun"
  expect_rc "rerun" 0
  expect_file_has "the rerun keeps the device" "$WORK/r_rerun/run.json" '"device": "thrust-omp"'
else
  echo "cli_device: thrust-omp not built here; only the refusals were checked"
fi
finish cli_device
