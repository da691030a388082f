# Shared helpers of the command-line tests (tests/cli*_test.sh), sourced with the script's
# arguments QFORGE_BIN WORKDIR: sets QF (the binary's absolute path: some checks change
# directory) and WORK (the work directory, emptied).
QF="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
WORK="$2"
rm -rf "$WORK"
mkdir -p "$WORK"
failed=0
passed=0

ok() { passed=$((passed + 1)); }
bad() {
  failed=$((failed + 1))
  echo "FAIL: $*" >&2
  [ -f "$WORK/stdout" ] && sed 's/^/  stdout: /' "$WORK/stdout" | head -20 >&2
  [ -f "$WORK/stderr" ] && sed 's/^/  stderr: /' "$WORK/stderr" | head -20 >&2
}

# run NAME ARGS...: runs qforge, keeps stdout/stderr in $WORK, sets $rc.
run() {
  local name="$1"
  shift
  "$QF" "$@" >"$WORK/stdout" 2>"$WORK/stderr"
  rc=$?
  cp "$WORK/stdout" "$WORK/$name.stdout"
  cp "$WORK/stderr" "$WORK/$name.stderr"
}
expect_rc() { # expect_rc WHAT CODE
  if [ "$rc" -eq "$2" ]; then ok; else bad "$1: exit code $rc, expected $2"; fi
}
expect_fail() { # expect_fail WHAT
  if [ "$rc" -ne 0 ]; then ok; else bad "$1: exit code 0, expected failure"; fi
}
expect_in() { # expect_in WHAT FILE(stdout|stderr) FIXED_STRING
  if grep -qF -- "$3" "$WORK/$2"; then ok; else bad "$1: $2 lacks '$3'"; fi
}
expect_file_has() { # expect_file_has WHAT FILE FIXED_STRING
  if [ -f "$2" ] && grep -qF -- "$3" "$2"; then ok; else bad "$1: $2 lacks '$3'"; fi
}
# json_value FILE KEY: the value of "KEY": ... on its line (pretty-printed JSON).
json_value() { grep -E "^  \"$2\": " "$1" | head -1 | sed -E 's/^[^:]*: //; s/,$//'; }

# finish NAME: prints the plain closing line and exits non-zero on any failure.
finish() {
  echo "$1: $((passed + failed)) checks, $passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}
