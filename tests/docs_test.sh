#!/usr/bin/env bash
# docs/architecture.md lists every engine and binding source file, and every file it names exists.
# The map writes a folder's files as `name.*` (header + source), `name.h`/`name.cpp`, or a
# comma-separated group on one line; this test expands `name.*` to the files present.
set -euo pipefail
cd "$(dirname "$0")/.."
doc=docs/architecture.md
fail=0
map=$(sed -n '/^```$/,/^```$/p' "$doc" | head -200)
# Files named in the map, with the folder line they sit under ("engine/<folder>/" or "bindings/").
named=$(python3 - "$doc" <<'PY'
import re, sys, os
text = open(sys.argv[1]).read()
block = text.split("```\n")[1]          # the first code block is the map
folder = None
out = set()
for line in block.splitlines():
    m = re.match(r"^ (\w+)/\s", line)
    if m: folder = "engine/" + m.group(1) + "/"; continue
    if line.startswith("bindings/"):
        for tok in re.findall(r"bindings/[\w/]+\.[\w*]+", line): out.add(tok)
        continue
    if folder and line.startswith("   "):
        head = re.split(r"\s{2,}", line.strip())[0]
        for tok in re.findall(r"[\w]+\.(?:\*|h|cpp)", head): out.add(folder + tok)
for t in sorted(out): print(t)
PY
)
listed=$(for t in $named; do
  if [[ $t == *.\* ]]; then
    ls ${t%.*}.h ${t%.*}.cpp 2>/dev/null || { echo "MISSING:$t"; }
  else
    [ -e "$t" ] && echo "$t" || echo "MISSING:$t"
  fi
done)
if grep -q MISSING <<<"$listed"; then
  echo "docs/architecture.md names files that do not exist:"; grep MISSING <<<"$listed" | sed 's/MISSING:/  /'; fail=1
fi
for f in $(git ls-files engine bindings | grep -E '\.(h|cpp|lua)$'; git ls-files --others --exclude-standard engine bindings | grep -E '\.(h|cpp|lua)$'); do
  grep -qxF "$f" <<<"$listed" || { echo "not in docs/architecture.md's map: $f"; fail=1; }
done
[ $fail = 0 ] && echo "docs_test: the map in $doc lists all $(wc -l <<<"$listed") engine and binding files"
exit $fail
