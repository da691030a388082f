#!/usr/bin/env bash
# recipes/zeroshot.lua from the command line: per-task results printed and recorded, option
# errors (exit 2, no run directory left), a malformed task file (exit 1, naming file and line).
# Usage: tests/cli_zeroshot_test.sh QFORGE_BIN WORKDIR   (run from the repository root)
set -u
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.sh" "$@"  # sets QF (absolute) and WORK (emptied)

TASK=tests/data/stories_mc.jsonl
TASK2=tests/data/stories_mc_contexts.jsonl

run zs run recipes/zeroshot.lua tasks="$TASK,$TASK2" out="$WORK/zs"
expect_rc "zeroshot.lua on two tasks" 0
expect_in "per-task line" stdout "task stories_mc: n 12  acc "
expect_in "per-task line (contexts form)" stdout "task stories_mc_contexts: n 3  acc "
expect_in "protocol line" stdout "protocol lm-eval multiple_choice"
expect_in "table" stdout "| task | n | acc | ± | acc_norm | ± |"
expect_in "mean row" stdout "| mean of 2 tasks |"
res="$WORK/zs/results.json"
expect_file_has "results.json: tasks" "$res" '"stories_mc": {'
expect_file_has "results.json: contexts task" "$res" '"stories_mc_contexts": {'
expect_file_has "results.json: acc_norm_stderr" "$res" '"acc_norm_stderr"'
expect_file_has "results.json: mean_acc" "$res" '"mean_acc"'
expect_file_has "results.json: protocol" "$res" '"protocol": "protocol lm-eval multiple_choice'
expect_file_has "run.json: the task files are inputs" "$WORK/zs/run.json" "stories_mc_contexts.jsonl"
# the recorded accuracy is the printed one
acc=$(python3 -c "import json,sys; print('%.4f' % json.load(open(sys.argv[1]))['tasks']['stories_mc']['acc'])" "$res")
expect_in "recorded acc printed" stdout "task stories_mc: n 12  acc $acc"

run zs3 run recipes/zeroshot.lua max_items=3 out="$WORK/zs3"
expect_rc "max_items=3" 0
expect_in "max_items=3" stdout "task stories_mc: n 3  acc "

# the same run twice: the same numbers (and threads=1 the same bits)
run zs1 run recipes/zeroshot.lua threads=1 out="$WORK/zs1"
run zs2 run recipes/zeroshot.lua threads=2 out="$WORK/zs2"
a=$(grep -E '"(acc|acc_norm)"' "$WORK/zs1/results.json"); b=$(grep -E '"(acc|acc_norm)"' "$WORK/zs2/results.json")
if [ -n "$a" ] && [ "$a" = "$b" ]; then ok; else bad "threads=1 and threads=2 record different accuracies: $a / $b"; fi

# option errors: exit 2, before any work, no run directory
opt_err() {
  local name="$1" want="$2"
  shift 2
  run "$name" run recipes/zeroshot.lua "$@" out="$WORK/$name"
  expect_rc "$name" 2
  expect_in "$name" stderr "$want"
  if [ -e "$WORK/$name" ]; then bad "$name: an option error left its run directory"; else ok; fi
}
opt_err dup "option 'tasks': two tasks named \"stories_mc\"" tasks="$TASK,./$TASK"
opt_err empty "option 'tasks': an empty entry" tasks="$TASK,,$TASK2"
opt_err negative "option 'max_items'" max_items=-1
opt_err unknown "unknown option 'limit'" limit=3

# a malformed task file: exit 1, the message names the file, the line and the field
printf '{"context": "a", "choices": ["b", "c"], "label": 0}\n{"context": "a", "choices": ["b", "c"], "label": 2}\n' >"$WORK/bad.jsonl"
run bad run recipes/zeroshot.lua tasks="$WORK/bad.jsonl" out="$WORK/bad"
expect_rc "malformed task" 1
expect_in "malformed task" stderr "bad.jsonl:2: field 'label': 2 is out of range for 2 options (0..1)"
if grep -q "qforge.Model" "$WORK/stdout"; then bad "malformed task: the model was loaded before the tasks were checked"; else ok; fi
run missing run recipes/zeroshot.lua tasks="$WORK/none.jsonl" out="$WORK/missing"
expect_rc "missing task file" 1
expect_in "missing task file" stderr "none.jsonl"

finish cli_zeroshot
