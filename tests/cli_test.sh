#!/usr/bin/env bash
# Command-line behaviour of qforge: exit codes, messages, the run directory, rerun.sh.
# Usage: tests/cli_test.sh QFORGE_BIN WORKDIR   (run from the repository root)
set -u
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.sh" "$@"  # sets QF (absolute) and WORK (emptied)

# ---- commands ------------------------------------------------------------------------
run version version
expect_rc "qforge version" 0
expect_in "qforge version" stdout "qforge 0."
expect_in "qforge version" stdout "commit"

run help --help
expect_rc "qforge --help" 0
expect_in "qforge --help" stdout "run RECIPE.lua"
run help2 help
expect_rc "qforge help" 0
run noargs
expect_rc "qforge (no arguments)" 2
run badcmd frobnicate
expect_rc "unknown command" 2
expect_in "unknown command" stderr "unknown command 'frobnicate'"
run runhelp run --help
expect_rc "qforge run --help" 0
expect_in "qforge run --help" stdout "key=value"
expect_in "qforge run --help" stdout "out=DIR"
run runnorecipe run
expect_rc "qforge run (no recipe)" 2

# ---- recipes used below ----------------------------------------------------------------
cat >"$WORK/opts.lua" <<'EOF'
local o = qf.options({bits = 4, scale = 0.5, name = "rtn", flag = false},
                     {bits = "bits per weight", name = "method name"})
print("bits=" .. o.bits .. " scale=" .. o.scale .. " name=" .. o.name .. " flag=" .. tostring(o.flag))
EOF
printf 'local x = 1\nlocal y = 2\nlocal z = = 3\n' >"$WORK/syntax.lua"
printf 'qf.options{}\nlocal function f()\n  error("boom")\nend\nf()\n' >"$WORK/boom.lua"
printf 'local t = qf.zeros{2, 2}\nprint(t:get(5, 1))\n' >"$WORK/throw.lua"
printf 'print("no options here")\n' >"$WORK/noopts.lua"
cat >"$WORK/ok.lua" <<'EOF'
local o = qf.options({bits = 4, label = "x"}, {bits = "bits"})
local t = qf.tensor{{1, 2}, {3, 4}}
qf.record("sum", t:sum() * o.bits)
qf.record("label", o.label)
qf.record("seed", qf.seed())
qf.log{event = "done", bits = o.bits}
print("ok recipe ran")
EOF

run missing run "$WORK/does_not_exist.lua"
expect_fail "missing recipe"
expect_in "missing recipe" stderr "does_not_exist.lua"

run notkv run "$WORK/opts.lua" bits
expect_rc "argument not key=value" 2
expect_in "argument not key=value" stderr "'bits'"

run unknown run "$WORK/opts.lua" foo=1 out="$WORK/r_unknown"
expect_fail "unknown option"
expect_in "unknown option" stderr "unknown option 'foo'"
expect_in "unknown option" stderr "opts.lua"
expect_in "unknown option lists known" stderr "bits"

run badint run "$WORK/opts.lua" bits=abc out="$WORK/r_badint"
expect_fail "bits=abc"
expect_in "bits=abc" stderr "'bits'"
expect_in "bits=abc" stderr "abc"
run badint2 run "$WORK/opts.lua" bits=3.5 out="$WORK/r_badint2"
expect_fail "bits=3.5"
expect_in "bits=3.5" stderr "option 'bits' expects an integer"
run badbool run "$WORK/opts.lua" flag=maybe out="$WORK/r_badbool"
expect_fail "flag=maybe"
expect_in "flag=maybe" stderr "'flag'"
run badseed run "$WORK/opts.lua" seed=x
expect_rc "seed=x" 2
expect_in "seed=x" stderr "'seed'"

run coerce run "$WORK/opts.lua" bits=3 scale=2 name=gptq flag=yes out="$WORK/r_coerce"
expect_rc "typed options" 0
expect_in "typed options" stdout "bits=3 scale=2.0 name=gptq flag=true"
expect_in "option echo" stderr "option bits = 3 (default 4)"

run syntax run "$WORK/syntax.lua" out="$WORK/r_syntax"
expect_fail "syntax error"
expect_in "syntax error" stderr "syntax.lua:3:"

run boom run "$WORK/boom.lua" out="$WORK/r_boom"
expect_rc "runtime error" 1
expect_in "runtime error" stderr "qforge: error:"
expect_in "runtime error" stderr "boom.lua:3: boom"
expect_in "runtime error" stderr "stack traceback"
expect_file_has "run.json after error" "$WORK/r_boom/run.json" '"status": "error"'
expect_file_has "run.json after error" "$WORK/r_boom/run.json" 'boom'

run throw run "$WORK/throw.lua" out="$WORK/r_throw"
expect_rc "C++ exception in a recipe" 1
expect_in "C++ exception in a recipe" stderr "throw.lua:2:"
expect_in "C++ exception in a recipe" stderr "index 5 out of bounds for dimension 1 of size 2"

run noopts run "$WORK/noopts.lua" x=1 out="$WORK/r_noopts"
expect_fail "key=value without qf.options"
expect_in "key=value without qf.options" stderr "option 'x' given but recipe noopts.lua declared no options"

# A run refused for its options before any work leaves no run directory: not the out= one it
# created (with its parents), not one under the default runs/; an out= that existed is kept, and so
# is the directory of a run that recorded something before its option error.
for d in r_unknown r_badint r_badint2 r_badbool r_noopts; do
  if [ -e "$WORK/$d" ]; then bad "option error ($d): the run directory was left behind"; else ok; fi
done
run nested run "$WORK/opts.lua" bits=x out="$WORK/r_nested/a/b"
expect_rc "option error, nested out=" 2
expect_in "option error, nested out=" stderr "removed (options refused before any work)"
if [ -e "$WORK/r_nested" ]; then bad "option error: the parents made for out= were left behind"; else ok; fi
mkdir -p "$WORK/cwd"
(cd "$WORK/cwd" && "$QF" run "$WORK/opts.lua" foo=1 >"$WORK/stdout" 2>"$WORK/stderr")
rc=$?
expect_rc "option error, default run directory" 2
if [ -e "$WORK/cwd/runs" ]; then bad "option error: runs/ was left behind"; else ok; fi
mkdir -p "$WORK/r_existing"
run existing run "$WORK/opts.lua" bits=x out="$WORK/r_existing"
expect_rc "option error, existing out=" 2
if [ -d "$WORK/r_existing" ]; then ok; else bad "option error: an existing out= directory was removed"; fi
cat >"$WORK/late_opt.lua" <<'EOF2'
local o = qf.options({ k = 2 })
qf.record("k", o.k)
qf.option_error("k", "refused after a record")
EOF2
run late run "$WORK/late_opt.lua" out="$WORK/r_late"
expect_rc "option error after a record" 2
expect_file_has "option error after a record keeps the run" "$WORK/r_late/run.json" '"status": "error"'
expect_file_has "option error after a record keeps the run" "$WORK/r_late/results.json" '"k": 2'

run recipehelp run "$WORK/opts.lua" --help
expect_rc "recipe --help" 0
expect_in "recipe --help" stdout "bits = 4"
expect_in "recipe --help" stdout "bits per weight"
expect_in "recipe --help" stdout "name = rtn"
expect_in "recipe --help" stdout "seed=N"

# Bad block-finetune options of a pipeline recipe fail before any calibration work.
run badft run recipes/gptq.lua finetune=true ft_params=scales,scale out="$WORK/r_badft"
expect_fail "bad ft_params"
expect_in "bad ft_params" stderr "option 'ft_params': unknown parameter group 'scale'"
run badft2 run recipes/decoupleq.lua finetune=true ft_epochs=0 out="$WORK/r_badft2"
expect_fail "ft_epochs=0"
expect_in "ft_epochs=0" stderr "option 'ft_epochs' must be an integer >= 1"
run badft3 run recipes/cvxq_quantease_outliers_ft.lua ft_lr=-1 out="$WORK/r_badft3"
expect_fail "ft_lr=-1"
expect_in "ft_lr=-1" stderr "option 'ft_lr' must be a finite number >= 0"
grep -q "calibration:" "$WORK/stderr" && bad "ft_lr=-1: calibration ran before the option check" || ok

# A bad allocation file fails before any calibration work, naming the option and the file.
run badalloc run recipes/cvxq_quantease.lua alloc_file="$WORK/no_such_alloc.safetensors" out="$WORK/r_badalloc"
expect_fail "missing alloc_file"
expect_in "missing alloc_file" stderr "error: option 'alloc_file': "
expect_in "missing alloc_file" stderr "no_such_alloc.safetensors'"
grep -q "calibration:" "$WORK/stderr" && bad "missing alloc_file: calibration ran before the check" || ok
printf 'not a safetensors file' > "$WORK/junk.safetensors"
run badalloc2 run recipes/cvxq.lua alloc_file="$WORK/junk.safetensors" out="$WORK/r_badalloc2"
expect_fail "corrupt alloc_file"
expect_in "corrupt alloc_file" stderr "error: option 'alloc_file': "
expect_in "corrupt alloc_file" stderr "junk.safetensors'"
run badsens run recipes/cvxq.lua sensitivity=hessian out="$WORK/r_badsens"
expect_fail "sensitivity=hessian"
expect_in "sensitivity=hessian" stderr "option 'sensitivity' must be"
grep -q "calibration:" "$WORK/stderr" && bad "sensitivity=hessian: calibration ran before the check" || ok

# ---- a successful run and its directory -------------------------------------------------
R="$WORK/r_ok"
run ok run "$WORK/ok.lua" bits=3 seed=7 out="$R"
expect_rc "successful recipe" 0
expect_in "successful recipe" stdout "ok recipe ran"
for f in recipe.lua options.json run.json results.json log.jsonl rerun.sh; do
  if [ -f "$R/$f" ]; then ok; else bad "run directory lacks $f"; fi
done
if cmp -s "$WORK/ok.lua" "$R/recipe.lua"; then ok; else bad "recipe.lua is not an identical copy"; fi
[ "$(json_value "$R/run.json" status)" = '"ok"' ] && ok || bad "run.json status is not ok"
[ "$(json_value "$R/run.json" seed)" = '7' ] && ok || bad "run.json seed is not 7"
git_commit="$(json_value "$R/run.json" git_commit)"
[ -n "$git_commit" ] && [ "$git_commit" != '""' ] && ok || bad "run.json has no git_commit"
expect_file_has "run.json" "$R/run.json" '"qforge_version"'
expect_file_has "run.json" "$R/run.json" '"wall_seconds"'
expect_file_has "run.json" "$R/run.json" '"start_time"'
expect_file_has "run.json" "$R/run.json" '"hostname"'
expect_file_has "run.json argv" "$R/run.json" '"bits=3"'
[ "$(json_value "$R/options.json" bits)" = '3' ] && ok || bad "options.json bits is not 3"
[ "$(json_value "$R/options.json" label)" = '"x"' ] && ok || bad "options.json label is not \"x\""
[ "$(json_value "$R/options.json" seed)" = '7' ] && ok || bad "options.json seed is not 7"
[ "$(json_value "$R/results.json" sum)" = '30.0' ] && ok || bad "results.json sum is not 30.0"
[ "$(json_value "$R/results.json" seed)" = '7' ] && ok || bad "results.json seed is not 7"
expect_file_has "log.jsonl" "$R/log.jsonl" '"event":"done"'
if [ -x "$R/rerun.sh" ]; then ok; else bad "rerun.sh is not executable"; fi

# rerun.sh reruns the copy with the same options into a new directory.
R2="$WORK/r_ok_rerun"
if (cd / && "$R/rerun.sh" "$R2" >"$WORK/stdout" 2>"$WORK/stderr"); then ok; else bad "rerun.sh failed"; fi
for k in sum label seed; do
  a="$(json_value "$R/results.json" $k)"
  b="$(json_value "$R2/results.json" $k)"
  [ -n "$a" ] && [ "$a" = "$b" ] && ok || bad "rerun result '$k': '$b' vs original '$a'"
done
[ "$(json_value "$R2/run.json" status)" = '"ok"' ] && ok || bad "rerun run.json status is not ok"

# Default run directory: runs/<recipe>-<timestamp> under the current directory.
(cd "$WORK" && "$QF" run ok.lua >/dev/null 2>&1)
if ls -d "$WORK"/runs/ok-2* >/dev/null 2>&1; then ok; else bad "default run directory runs/ok-<timestamp> not created"; fi

finish cli
