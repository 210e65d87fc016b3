#!/usr/bin/env bash
# The fuzzing run (a benchmark, not part of `make test`): every cargo-fuzz
# target of fuzz/ for FUZZ_SECONDS each (default 600), or the targets named
# as arguments. Installs what cargo-fuzz needs (a nightly toolchain and
# cargo-fuzz itself) when missing. Each crash libFuzzer finds is copied to
# fuzz/crashes/<target>/, where fuzz-harness/tests/corpus_replay.rs replays
# it in `make test` (commit it with the fix). Prints one line per target:
# runs, seconds, crashes.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${FUZZ_SECONDS:-600}"

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)

summary=()
failed=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t" "fuzz/crashes/$t"
  log="fuzz/artifacts/$t/run.log"
  before=$(find "fuzz/artifacts/$t" -name 'crash-*' | wc -l)
  # libFuzzer stops at a target's first crash: the target fails, and its
  # input is kept for the replay test.
  if ! cargo +nightly fuzz run --fuzz-dir fuzz "$t" -- -max_total_time="$SECONDS_EACH" \
      -print_final_stats=1 >"$log" 2>&1; then
    failed=1
  fi
  crashes=$(( $(find "fuzz/artifacts/$t" -name 'crash-*' | wc -l) - before ))
  find "fuzz/artifacts/$t" -name 'crash-*' -exec cp -n {} "fuzz/crashes/$t/" \;
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "unknown (see $log)")
  summary+=("$t runs=$runs seconds=$SECONDS_EACH crashes=$crashes")
done
printf '%s\n' "${summary[@]}"
exit $failed
