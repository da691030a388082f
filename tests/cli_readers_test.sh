#!/usr/bin/env bash
# File readers given hostile inputs through the qforge command (issue 14): JSON nested 100 000
# levels deep in each reader of untrusted JSON is one clear error and exit 1, not a crash.
# Usage: tests/cli_readers_test.sh QFORGE_BIN WORKDIR   (run from the repository root)
set -u
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.sh" "$@"  # sets QF (absolute) and WORK (emptied)

# The inputs, written by a Lua script (raw bytes where qforge's writers would refuse them).
cat >"$WORK/gen.lua" <<'LUA'
local dir = qf.options({ dir = "" }).dir
local deep = string.rep("[", 100000) .. "0" .. string.rep("]", 100000)
local function put(p, s) local f = assert(io.open(p, "wb")); f:write(s); f:close() end
local h = '{"t": {"dtype": "F32", "shape": ' .. deep .. ', "data_offsets": [0, 0]}}'
put(dir .. "/deep.safetensors", string.pack("<I8", #h) .. h)
os.execute("mkdir -p '" .. dir .. "/hf' '" .. dir .. "/tok'")
put(dir .. "/hf/config.json", '{"architectures": ' .. deep .. '}')
put(dir .. "/tok/tokenizer.json", '{"model": {"type": "BPE", "vocab": {"a": ' .. deep .. '}}}')
qf.save_tensors(dir .. "/deep_qforge.safetensors", { x = qf.zeros({ 1 }) }, { qforge_format = "1", qforge = '{"qforge_format": ' .. deep .. '}' })
LUA
run gen run "$WORK/gen.lua" "dir=$WORK" out="$WORK/run_gen"
expect_rc "generating the inputs" 0

# reader CALL: a one-line recipe calling the reader; expects exit 1 and the depth message.
reader() {
  local name="$1" call="$2"
  echo "$call" >"$WORK/$name.lua"
  run "$name" run "$WORK/$name.lua" out="$WORK/run_$name"
  expect_rc "$name: exit code (139 was the crash)" 1
  expect_in "$name" stderr "JSON nested deeper than 64 levels"
}
reader safetensors "qf.load_tensors('$WORK/deep.safetensors')"
expect_in safetensors stderr "safetensors file '$WORK/deep.safetensors'"
reader hf_config "qf.load_model('$WORK/hf')"
expect_in hf_config stderr "config.json '$WORK/hf/config.json'"
reader tokenizer_json "qf.load_tokenizer('$WORK/tok/tokenizer.json')"
expect_in tokenizer_json stderr "tokenizer file '$WORK/tok/tokenizer.json'"
reader qforge_header "qf.load_model('$WORK/deep_qforge.safetensors')"
expect_in qforge_header stderr "qforge file '$WORK/deep_qforge.safetensors': field '__metadata__.qforge'"

finish cli_readers
