#!/usr/bin/env bash
# Command-line behaviour of the files area: qforge rerun (resolved options, commit and input
# fingerprints checked first), local modules copied into the run directory, the OpenMP wait
# policy default, stale temporaries of directory exports, non-regular input files.
# Usage: tests/cli_files_test.sh QFORGE_BIN WORKDIR   (run from the repository root)
set -u
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.sh" "$@"  # sets QF (absolute) and WORK (emptied)
T=10  # seconds: any check that could block (a FIFO, /dev/zero) runs under this timeout
# runx NAME CMD...: like run, for a command that wraps qforge (timeout, env).
runx() {
  local name="$1"
  shift
  "$@" >"$WORK/stdout" 2>"$WORK/stderr"
  rc=$?
  cp "$WORK/stdout" "$WORK/$name.stdout"
  cp "$WORK/stderr" "$WORK/$name.stderr"
}

# ---- a recipe with options, a text input and a local module ----------------------------
mkdir -p "$WORK/rec"
printf 'Once upon a time there was a cat.\nThe cat sat.\n' >"$WORK/input.txt"
cat >"$WORK/rec/helper.lua" <<'LUA'
return { scale = function(x) return 10 * x end }
LUA
cat >"$WORK/rec/demo.lua" <<'LUA'
local o = qf.options({ bits = 4, factor = 0.1, name = "demo", flag = false, text = "" })
local h = require("helper")
local t = qf.read_text(o.text)
qf.record("chars", #t)
qf.record("value", h.scale(o.bits) * o.factor)
qf.record("name", o.name)
qf.record("flag", o.flag)
qf.record("threads", qf.threads())
LUA
R="$WORK/r1"
(cd "$WORK" && "$QF" run rec/demo.lua text=input.txt threads=1 out=r1 >"$WORK/stdout" 2>"$WORK/stderr")
rc=$?
expect_rc "demo run" 0
[ -f "$R/lua/helper.lua" ] && cmp -s "$R/lua/helper.lua" "$WORK/rec/helper.lua" && ok || bad "run directory lacks an identical lua/helper.lua"
expect_file_has "run.json notes the module" "$R/run.json" '"module": "helper"'
expect_file_has "run.json notes the module copy" "$R/run.json" '"copy": "lua/helper.lua"'
expect_file_has "options.json holds every resolved option" "$R/options.json" '"factor": 0.1'
expect_file_has "options.json holds every resolved option" "$R/options.json" '"name": "demo"'

# The run directory reruns on its own: the local module's source may go away.
mv "$WORK/rec/helper.lua" "$WORK/rec/helper.lua.away"
run rerun1 rerun "$R" out="$WORK/r1_rerun"
expect_rc "qforge rerun" 0
R2="$WORK/r1_rerun"
for k in chars value name flag threads; do
  a="$(json_value "$R/results.json" $k)"
  b="$(json_value "$R2/results.json" $k)"
  [ -n "$a" ] && [ "$a" = "$b" ] && ok || bad "rerun result '$k': '$b' vs original '$a'"
done
# Every resolved option is passed, not only those typed: bits, factor, name, flag were defaults.
for kv in '"bits=4"' '"factor=0.1"' '"name=demo"' '"flag=false"' '"text=input.txt"' '"seed=0"' '"threads=1"'; do
  expect_file_has "rerun argv passes $kv" "$R2/run.json" "$kv"
done
expect_file_has "rerun records what it reran" "$R2/run.json" "\"rerun_of\": \"$(cd "$R" && pwd)\""
cmp -s "$R/lua/helper.lua" "$R2/lua/helper.lua" && ok || bad "the rerun's run directory lacks the module copy"
mv "$WORK/rec/helper.lua.away" "$WORK/rec/helper.lua"

# rerun.sh is a one-liner around qforge rerun (positional OUT_DIR still accepted).
if (cd / && "$R/rerun.sh" "$WORK/r1_sh" >"$WORK/stdout" 2>"$WORK/stderr"); then ok; else bad "rerun.sh failed"; fi
expect_file_has "rerun.sh calls qforge rerun" "$R/rerun.sh" " rerun "
[ "$(json_value "$WORK/r1_sh/results.json" value)" = "$(json_value "$R/results.json" value)" ] && ok || bad "rerun.sh result differs"

# A changed input is refused before any work, naming the file; --force runs anyway.
cp "$WORK/input.txt" "$WORK/input.orig"
{ printf 'One more sentence.\n'; cat "$WORK/input.orig"; } >"$WORK/input.txt"
run rerun_changed rerun "$R" out="$WORK/r1_changed"
expect_rc "rerun with a changed input" 1
expect_in "rerun with a changed input" stderr "input 'input.txt': fingerprint"
expect_in "rerun with a changed input" stderr "add --force"
[ ! -e "$WORK/r1_changed" ] && ok || bad "a refused rerun created its run directory"
run rerun_forced rerun "$R" out="$WORK/r1_forced" --force
expect_rc "rerun --force" 0
expect_file_has "forced rerun records the differences" "$WORK/r1_forced/run.json" '"rerun_forced_over"'
[ "$(json_value "$WORK/r1_forced/results.json" chars)" != "$(json_value "$R/results.json" chars)" ] && ok || bad "forced rerun did not read the changed input"
cp "$WORK/input.orig" "$WORK/input.txt"

# A tensors file read with qf.load_tensors (e.g. alloc_file=) is fingerprinted and checked too.
cat >"$WORK/tensors.lua" <<'LUA'
local o = qf.options({ file = "", make = false })
if o.make then qf.save_tensors(o.file, { x = qf.ones({ 3 }) }) return end
local t = qf.load_tensors(o.file)
qf.record("sum", t.x:sum())
LUA
"$QF" run "$WORK/tensors.lua" file="$WORK/t.safetensors" make=true out="$WORK/r_make" >/dev/null 2>&1
run tensors run "$WORK/tensors.lua" file="$WORK/t.safetensors" out="$WORK/r_tensors"
expect_rc "load_tensors run" 0
expect_file_has "load_tensors input noted" "$WORK/r_tensors/run.json" "\"path\": \"$WORK/t.safetensors\""
"$QF" run "$WORK/tensors.lua" file="$WORK/t.safetensors" make=true out="$WORK/r_make2" >/dev/null 2>&1  # rewritten, same bytes: same fingerprint
run tensors_same rerun "$WORK/r_tensors" out="$WORK/r_tensors_rerun"
expect_rc "rerun with the same tensors file" 0
printf 'x' >>"$WORK/t.safetensors"
run tensors_changed rerun "$WORK/r_tensors" out="$WORK/r_tensors_changed"
expect_rc "rerun with a changed tensors file" 1
expect_in "rerun with a changed tensors file" stderr "input '$WORK/t.safetensors': fingerprint"

# A different commit, an edited recipe copy or module copy: refused, each difference printed.
cp -r "$R" "$WORK/r_edit"
sed -i 's/"git_commit": "[^"]*"/"git_commit": "0123456789abcdef"/' "$WORK/r_edit/run.json"
echo '-- edited' >>"$WORK/r_edit/recipe.lua"
echo '-- edited' >>"$WORK/r_edit/lua/helper.lua"
rm -f "$WORK/input.txt"
run rerun_edit rerun "$WORK/r_edit" out="$WORK/r_edit_rerun"
expect_rc "rerun of an edited run directory" 1
expect_in "rerun: commit" stderr "git commit: the run used 0123456789abcdef, this binary is"
expect_in "rerun: recipe" stderr "recipe '$(cd "$WORK/r_edit" && pwd)/recipe.lua': fingerprint"
expect_in "rerun: module" stderr "module 'helper'"
expect_in "rerun: missing input" stderr "input 'input.txt': missing"
expect_in "rerun: count" stderr "4 differences"
cp "$WORK/input.orig" "$WORK/input.txt"
run rerun_help rerun --help
expect_rc "qforge rerun --help" 0
expect_in "qforge rerun --help" stdout "--force"
run rerun_nodir rerun "$WORK/no_such_run"
expect_rc "rerun of a missing directory" 2
run rerun_notrun rerun "$WORK/rec"
expect_rc "rerun of a directory that is not a run" 2
expect_in "rerun of a directory that is not a run" stderr "is not a run directory (no run.json)"

# ---- OpenMP wait policy ------------------------------------------------------------------
cat >"$WORK/noop.lua" <<'LUA'
qf.record("ok", true)
LUA
runx wait_default env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT "$QF" run "$WORK/noop.lua" out="$WORK/r_wait"
[ "$(json_value "$WORK/r_wait/run.json" omp_wait_policy)" = '"PASSIVE"' ] && ok || bad "run.json omp_wait_policy is not PASSIVE by default"
[ "$(json_value "$WORK/r_wait/run.json" omp_wait_policy_source)" = '"qforge default"' ] && ok || bad "run.json omp_wait_policy_source is not 'qforge default'"
runx wait_user env OMP_WAIT_POLICY=active "$QF" run "$WORK/noop.lua" out="$WORK/r_wait_user"
[ "$(json_value "$WORK/r_wait_user/run.json" omp_wait_policy)" = '"active"' ] && ok || bad "an explicit OMP_WAIT_POLICY=active is not respected"
[ "$(json_value "$WORK/r_wait_user/run.json" omp_wait_policy_source)" = '"environment"' ] && ok || bad "omp_wait_policy_source is not 'environment'"
# What the OpenMP runtime itself uses (libgomp prints it at start-up): no spinning by default.
spin="$(env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT OMP_DISPLAY_ENV=verbose "$QF" version 2>&1 | grep GOMP_SPINCOUNT | tail -1)"
case "$spin" in *"'0'"*) ok ;; *) bad "runtime spin count by default: '$spin', expected '0'" ;; esac
spin="$(env OMP_WAIT_POLICY=active OMP_DISPLAY_ENV=verbose "$QF" version 2>&1 | grep GOMP_SPINCOUNT | tail -1)"
case "$spin" in *"'0'"*) bad "OMP_WAIT_POLICY=active not respected by the runtime: '$spin'" ;; *) ok ;; esac
run runhelp run --help
expect_in "qforge run --help documents the wait policy" stdout "OMP_WAIT_POLICY=PASSIVE"

# ---- directory exports: stale temporaries of killed runs are removed on the next write ----
cat >"$WORK/save.lua" <<'LUA'
local o = qf.options({ dest = "" })
qf.load_model("../shared/models/stories260K"):save(o.dest, { format = "hf" })
LUA
D="$WORK/export_hf"
mkdir -p "$D" && echo old >"$D/marker"
# A stale temporary of a killed writer (a pid that has exited) and one of a live process.
sh -c 'exit 0' & dead=$!
wait $dead
mkdir -p "$D.tmp.$dead" && head -c 100000 /dev/zero >"$D.tmp.$dead/model.safetensors"
mkdir -p "$D.tmp.1"
run save_stale run "$WORK/save.lua" dest="$D" out="$WORK/r_save"
expect_rc "hf export over an existing directory" 0
[ ! -e "$D.tmp.$dead" ] && ok || bad "stale temporary $D.tmp.$dead not removed"
[ -d "$D.tmp.1" ] && ok || bad "a live process's temporary was removed"
[ -f "$D/config.json" ] && [ ! -e "$D/marker" ] && ok || bad "the export did not replace the old directory"
[ "$(ls -d "$D".* 2>/dev/null | grep -v "\.tmp\.1$" | wc -l)" = 0 ] && ok || bad "temporaries left beside $D: $(ls -d "$D".*)"
rmdir "$D.tmp.1"
# kill -9 in the middle of an export: the destination stays complete and the next write cleans up.
cat >"$WORK/save_loop.lua" <<'LUA'
local o = qf.options({ dest = "" })
local m = qf.load_model("../shared/models/stories260K")
for _ = 1, 100000 do m:save(o.dest, { format = "hf" }) end
LUA
"$QF" run "$WORK/save_loop.lua" dest="$D" out="$WORK/r_loop" >/dev/null 2>&1 &
pid=$!
for _ in $(seq 1 50); do [ -e "$D.tmp.$pid" ] && break; sleep 0.05; done
sleep 0.5
kill -9 $pid 2>/dev/null
wait $pid 2>/dev/null
[ -f "$D/config.json" ] && [ -f "$D/model.safetensors" ] && ok || bad "after kill -9 mid-export $D is not complete"
run save_after_kill run "$WORK/save.lua" dest="$D" out="$WORK/r_save2"
expect_rc "export after a killed export" 0
[ -z "$(ls -d "$D".* 2>/dev/null)" ] && ok || bad "temporaries of the killed export left: $(ls -d "$D".* 2>/dev/null)"

# ---- non-regular files: refused at once, naming the path and what it is -------------------
mkfifo "$WORK/fifo"
runx fifo_text timeout $T "$QF" run recipes/eval.lua text="$WORK/fifo" out="$WORK/r_fifo_text"
expect_fail "text=FIFO"
[ "$rc" -ne 124 ] && ok || bad "text=FIFO blocked (timed out)"
expect_in "text=FIFO" stderr "'$WORK/fifo' is a FIFO (named pipe), expected a regular file"
runx devzero timeout $T "$QF" run recipes/eval.lua text=/dev/zero out="$WORK/r_devzero"
expect_fail "text=/dev/zero"
[ "$rc" -ne 124 ] && ok || bad "text=/dev/zero did not stop (timed out)"
expect_in "text=/dev/zero" stderr "'/dev/zero' is a character device, expected a regular file"
runx fifo_model timeout $T "$QF" run recipes/eval.lua model="$WORK/fifo" out="$WORK/r_fifo_model"
expect_fail "model=FIFO"
[ "$rc" -ne 124 ] && ok || bad "model=FIFO blocked (timed out)"
expect_in "model=FIFO" stderr "is a FIFO (named pipe)"
runx fifo_alloc timeout $T "$QF" run recipes/cvxq.lua alloc_file="$WORK/fifo" out="$WORK/r_fifo_alloc"
expect_fail "alloc_file=FIFO"
[ "$rc" -ne 124 ] && ok || bad "alloc_file=FIFO blocked (timed out)"
expect_in "alloc_file=FIFO" stderr "is a FIFO (named pipe)"
runx fifo_recipe timeout $T "$QF" run "$WORK/fifo" out="$WORK/r_fifo_recipe"
expect_fail "recipe FIFO"
[ "$rc" -ne 124 ] && ok || bad "a FIFO recipe blocked (timed out)"
expect_in "recipe FIFO" stderr "is a FIFO (named pipe)"

finish cli_files
