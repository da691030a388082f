#!/usr/bin/env bash
# docs/architecture.md lists every engine and binding source file, and every file it names exists.
# The map writes a folder's files as `name.*` (header + source), `name.h`/`name.cpp`, or a
# comma-separated group on one line, each optionally under a subfolder (`cpu/gemm.*`); this
# test expands `name.*` to the files present.
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
        # a name may sit in a subfolder of the folder: "cpu/gemm.*" under " backend/"
        for tok in re.findall(r"[\w]+(?:/[\w]+)*\.(?:\*|h|cpp)", head): out.add(folder + tok)
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

# Method citations: every methods.md#<anchor> cited in the code and docs must be an <a id> of
# docs/methods.md, and only docs/methods.md's citation map may name the external algorithms
# reference that the old "§N" citations pointed at.
methods=docs/methods.md
anchors=$(grep -o '<a id="[^"]*"' "$methods" | sed 's/^<a id="//; s/"$//' | sort -u)
cites=$(git ls-files -co --exclude-standard -- engine bindings recipes tests bench fuzz scripts docs README.md |
        xargs -d '\n' grep -InoE 'methods\.md#[A-Za-z0-9_-]+' -- 2>/dev/null || true)
dangling=$(while IFS= read -r hit; do
  [ -n "$hit" ] || continue
  grep -qxF "${hit##*#}" <<<"$anchors" || echo "  $hit"
done <<<"$cites")
if [ -n "$dangling" ]; then
  echo "cited anchors that $methods does not define (<a id=\"...\">):"; echo "$dangling"; fail=1
fi
old_ref='algorithms[.]md'
map_line=$(grep -n 'id="citation-map"' "$methods" | head -1 | cut -d: -f1)
stale=$( (git ls-files -co --exclude-standard | grep -vxF "$methods" | xargs -d '\n' grep -InE "$old_ref" -- 2>/dev/null || true)
         grep -nE "$old_ref" "$methods" | awk -F: -v m="${map_line:-0}" -v f="$methods" '$1 < m || m == 0 { print f ":" $0 }' || true)
if [ -n "$stale" ]; then
  echo "files that still cite the external algorithms reference (only $methods's citation map may):"
  sed 's/^/  /' <<<"$stale"; fail=1
fi
[ $fail = 0 ] && echo "docs_test: $(grep -c . <<<"$cites") methods.md citations, all to anchors of $methods; no other file names the old reference"
exit $fail
