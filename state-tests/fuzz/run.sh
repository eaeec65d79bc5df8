#!/usr/bin/env bash
# Runs Sluice's fuzz targets, each for SECONDS (default 60), one after the
# other, and prints the executions and crashes of each.
#
#   state-tests/fuzz/run.sh [SECONDS] [TARGET...]     (no TARGET: all of them)
#
# Needs the nightly toolchain; installs cargo-fuzz when it is missing. The
# corpus grows in state-tests/fuzz/corpus/TARGET (not committed), starting
# from the hand-written seeds in state-tests/fuzz/seeds/TARGET; a crash is
# saved in state-tests/fuzz/artifacts/TARGET/ and its log in
# state-tests/fuzz/logs/TARGET.log. Set CARGO_TARGET_DIR to build elsewhere.
#
# No sanitizer (-s none): every target exercises safe Rust, where AddressSanitizer
# finds nothing that a panic would not, at half the speed. Debug assertions
# are on (-a), so an arithmetic overflow is a crash.
set -euo pipefail

fuzz_dir="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$fuzz_dir/../.." && pwd)"
seconds="${1:-60}"
shift || true
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' "$fuzz_dir/Cargo.toml" | grep -v '^sluice')
fi

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

cd "$repo"
mkdir -p "$fuzz_dir/logs"
cargo +nightly fuzz build --fuzz-dir "$fuzz_dir" -s none -a

printf '%-16s %8s %12s %8s  %s\n' target seconds executions crashes artifact
status=0
for target in "${targets[@]}"; do
    corpus="$fuzz_dir/corpus/$target"
    artifacts="$fuzz_dir/artifacts/$target"
    log="$fuzz_dir/logs/$target.log"
    mkdir -p "$corpus" "$artifacts"
    before=$(find "$artifacts" -type f | wc -l)
    if cargo +nightly fuzz run --fuzz-dir "$fuzz_dir" -s none -a "$target" "$corpus" "$fuzz_dir/seeds/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
        -artifact_prefix="$artifacts/" >"$log" 2>&1; then
        :
    else
        status=1
    fi
    executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    # Without final stats (a crash can skip them), the last status line's count.
    [ -n "$executions" ] || executions=$(sed -n 's/^#\([0-9]*\).*/\1/p' "$log" | tail -1)
    after=$(find "$artifacts" -type f | wc -l)
    newest=$(ls -t "$artifacts" 2>/dev/null | head -1)
    crashes=$((after - before))
    printf '%-16s %8s %12s %8s  %s\n' "$target" "$seconds" "${executions:-?}" "$crashes" \
        "$([ "$crashes" -gt 0 ] && echo "$artifacts/$newest")"
done
exit "$status"
