#!/usr/bin/env bash
# Short fuzz smoke run for CI: each target for FUZZ_SMOKE_SECONDS (default 60) with AddressSanitizer,
# debug assertions and a 2 GiB RSS limit, starting from the committed seeds.
#
#   bash fuzz/smoke.sh            # from the repository root or from fuzz/
#
# Exit status: 0 when every target ran clean, or when cargo-fuzz is unavailable and cannot be
# installed within FUZZ_INSTALL_TIMEOUT seconds (default 600; the run is then skipped with a clear
# message); non-zero when a target crashes, leaks, times out, exceeds the memory limit or fails to
# build. The crashing input is left in fuzz/artifacts/<target>/ and its path is printed.
#
# Only the stable toolchain is assumed: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass the nightly-only
# sanitizer flags. If the AddressSanitizer build fails, the targets are built with `-s none`
# instead (their size-capped allocator then stands in for ASan's allocation limit).
set -euo pipefail

cd "$(dirname "$0")"
SECONDS_PER_TARGET="${FUZZ_SMOKE_SECONDS:-60}"
INSTALL_TIMEOUT="${FUZZ_INSTALL_TIMEOUT:-600}"
TARGETS=(parse_bytes structured parse_onnx)
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz smoke: cargo-fuzz not found; installing (at most ${INSTALL_TIMEOUT}s)"
    start=$(date +%s)
    if ! timeout "$INSTALL_TIMEOUT" cargo install cargo-fuzz --locked --quiet; then
        echo "fuzz smoke: SKIPPED: cargo-fuzz could not be installed within ${INSTALL_TIMEOUT}s" \
            "(no registry access or too slow); the regression corpus is still replayed by cargo test"
        exit 0
    fi
    echo "fuzz smoke: cargo-fuzz installed in $(($(date +%s) - start))s"
fi
echo "fuzz smoke: $(cargo fuzz --version)"

sanitizer=address
start=$(date +%s)
if ! cargo fuzz build --debug-assertions --sanitizer address; then
    echo "fuzz smoke: AddressSanitizer build failed; building without a sanitizer (-s none)"
    sanitizer=none
    cargo fuzz build --debug-assertions --sanitizer none
fi
echo "fuzz smoke: built with sanitizer=$sanitizer in $(($(date +%s) - start))s"

status=0
# parse_onnx reads ONNX protobufs: its own dictionary, and room for its largest seed (14 KB).
dict_of() { if [ "$1" = parse_onnx ]; then echo onnx.dict; else echo bnfold.dict; fi; }
max_len_of() { if [ "$1" = parse_onnx ]; then echo 16384; else echo 8192; fi; }

for t in "${TARGETS[@]}"; do
    corpus=$(mktemp -d)
    echo "fuzz smoke: $t for ${SECONDS_PER_TARGET}s"
    # New inputs go to the temporary corpus; the committed seeds are only read.
    if cargo fuzz run --debug-assertions --sanitizer "$sanitizer" "$t" "$corpus" "seeds/$t" -- \
        -dict="$(dict_of "$t")" -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 \
        -timeout=10 -max_len="$(max_len_of "$t")" -print_final_stats=1 >"$corpus.log" 2>&1; then
        grep -E '^#[0-9]+[[:space:]]+DONE' "$corpus.log" | tail -1 || true
    else
        status=1
        echo "fuzz smoke: $t FAILED; last lines of its log:"
        tail -n 40 "$corpus.log"
        ls -1 "artifacts/$t" 2>/dev/null | sed "s|^|fuzz smoke: artifact fuzz/artifacts/$t/|" || true
    fi
    rm -rf "$corpus" "$corpus.log"
done
if [ "$status" -ne 0 ]; then
    echo "fuzz smoke: a target failed; see fuzz/README.md, 'Adding a crash to the regression set'"
fi
exit "$status"
