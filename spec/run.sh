#!/usr/bin/env bash
# Run the busted suites and end with the line CI reads: "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
mkdir -p spec/tmp
out=spec/tmp/results.tap
: > "$out"
status=0
# The default run leaves out specs tagged #long; FERRY_SPEC_TAGS=long runs only those.
if [ -n "${FERRY_SPEC_TAGS:-}" ]; then
  tags="--tags=$FERRY_SPEC_TAGS"
else
  tags="--exclude-tags=long"
fi
for dir in "$@"; do
  [ -d "$dir" ] || continue
  ls "$dir"/*_spec.lua >/dev/null 2>&1 || continue
  echo "== $dir"
  busted --lua=luajit -o TAP "$tags" "$dir" > spec/tmp/last.tap 2>&1 || status=1
  cat spec/tmp/last.tap >> "$out"
  grep -E '^not ok' -A12 spec/tmp/last.tap | grep -vE '^ok ' || true
  printf '   %s passed, %s failed\n' "$(grep -cE '^ok ' spec/tmp/last.tap)" \
    "$(grep -cE '^not ok ' spec/tmp/last.tap)"
done
passed=$(grep -cE '^ok ' "$out")
failed=$(grep -cE '^not ok ' "$out")
# busted failing without a "not ok" (a spec file that does not load) is a failure too.
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  failed=1
  echo "busted exited non-zero without a failing test: a spec file did not load" >&2
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
