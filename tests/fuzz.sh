#!/usr/bin/env bash
# Runs the cargo-fuzz targets of gatewayd, each for a bounded time, from their seed corpora.
#
#   tests/fuzz.sh [--seconds N] [target ...]   every target (or those named), N s each (600)
#   tests/fuzz.sh --list                       the targets, their crates and -max_len
#
# Each fuzz crate is built once with the libFuzzer instrumentation: `cargo fuzz build` when
# cargo-fuzz is installed, otherwise `cargo +nightly build` with the sancov flags the crates'
# READMEs give (no sanitizer: the crates forbid `unsafe`; debug assertions and overflow checks
# on). Builds and runs are at nice 19. A target's seeds (seeds/<target>/, or seeds/ in a crate
# with one target) are copied into its corpus directory (corpus/<target>, gitignored, kept
# between runs), and libFuzzer runs with -max_total_time and the target's -max_len. Findings go
# to artifacts/<target>/ in the crate.
#
# One line per target is printed and appended to target/fuzz/runs.log: date (UTC), target,
# seconds, executions (libFuzzer's stat::number_of_executed_units) and the result. libFuzzer's
# own output is in target/fuzz/<target>.log. The exit status is 1 if any target crashed, timed
# out, ran out of memory or did not finish; the line names the artifact.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
triple=x86_64-unknown-linux-gnu
sancov_flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"

# target, fuzz crate (relative to the repository), -max_len
targets=(
  "session drivers/mqtt/fuzz 2048"
  "datagrams drivers/coap/fuzz 2048"
  "config gateway/daemon/fuzz 4096"
  "registry_json gateway/daemon/fuzz 4096"
  "topic_templates gateway/daemon/fuzz 4096"
  "manifest image/fuzz 4096"
)

usage() {
  sed -n '4,5s/^# \{0,1\}//p' "$0"
  exit 0
}

die() {
  echo "tests/fuzz.sh: $*" >&2
  exit 2
}

lookup() { # target -> "crate max_len", or nothing
  local t
  for t in "${targets[@]}"; do
    read -r name crate max_len <<<"$t"
    if [[ $name == "$1" ]]; then
      echo "$crate $max_len"
      return
    fi
  done
}

seconds=600
selected=()
while (($#)); do
  case $1 in
    --seconds)
      [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--seconds needs a whole number of seconds"
      seconds=$2
      shift 2
      ;;
    --seconds=*)
      seconds=${1#--seconds=}
      [[ $seconds =~ ^[1-9][0-9]*$ ]] || die "--seconds needs a whole number of seconds"
      shift
      ;;
    --list)
      for t in "${targets[@]}"; do
        read -r name crate max_len <<<"$t"
        printf '%-16s %-22s -max_len=%s\n' "$name" "$crate" "$max_len"
      done
      exit 0
      ;;
    -h | --help) usage ;;
    -*) die "unknown option $1 (--seconds N, --list)" ;;
    *)
      [[ -n $(lookup "$1") ]] || die "unknown target $1 (tests/fuzz.sh --list names them)"
      selected+=("$1")
      shift
      ;;
  esac
done
if ((${#selected[@]} == 0)); then
  for t in "${targets[@]}"; do
    read -r name _ <<<"$t"
    selected+=("$name")
  done
fi

# libFuzzer needs a nightly toolchain (sancov passes, libfuzzer-sys)
command -v rustup >/dev/null || die "rustup not found: the fuzz targets need a nightly toolchain (https://rustup.rs)"
rustup toolchain list | grep -q '^nightly' ||
  die "no nightly toolchain: install one with \`rustup toolchain install nightly\`"

logs=$root/target/fuzz
mkdir -p "$logs"

# Build each crate once.
built=" "
for name in "${selected[@]}"; do
  read -r crate _ <<<"$(lookup "$name")"
  [[ $built == *" $crate "* ]] && continue
  dir=$root/$crate
  echo "== building $crate ($(date -u '+%H:%M:%S') UTC)" >&2
  if cargo +nightly fuzz --version >/dev/null 2>&1; then
    # cargo-fuzz runs from the crate the fuzz directory belongs to
    (cd "$dir/.." && env -u CARGO_TARGET_DIR nice -n 19 cargo +nightly fuzz build \
      --fuzz-dir "$dir" --release --debug-assertions --sanitizer none --target "$triple") ||
      die "building $crate failed"
  else
    (cd "$dir" && env -u CARGO_TARGET_DIR RUSTFLAGS="$sancov_flags" nice -n 19 \
      cargo +nightly build --release --target "$triple" --bins) ||
      die "building $crate failed"
  fi
  built+="$crate "
done

failed=0
results=()
for name in "${selected[@]}"; do
  read -r crate max_len <<<"$(lookup "$name")"
  dir=$root/$crate
  bin=$dir/target/$triple/release/$name
  [[ -x $bin ]] || die "$bin was not built"
  if [[ -d $dir/seeds/$name ]]; then
    seeds=$dir/seeds/$name
  else
    seeds=$dir/seeds
  fi
  mkdir -p "$dir/corpus/$name" "$dir/artifacts/$name"
  if [[ -d $seeds ]]; then
    find "$seeds" -maxdepth 1 -type f -exec cp -- {} "$dir/corpus/$name/" \;
  fi
  log=$logs/$name.log
  started=$(date -u '+%Y-%m-%d %H:%M')
  echo "== $name: ${seconds} s, -max_len=$max_len ($started UTC), log $log" >&2
  rc=0
  # -max_total_time bounds the run; timeout(1) is a backstop for a run that never gets back
  # to libFuzzer's loop (SIGINT still prints the final stats).
  (cd "$dir" && timeout -s INT -k 30 $((seconds + 300)) nice -n 19 "$bin" \
    -max_total_time="$seconds" -max_len="$max_len" -timeout=60 -print_final_stats=1 \
    -artifact_prefix="artifacts/$name/" "corpus/$name") >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
  [[ -n $artifact ]] && artifact=$crate/${artifact#./}
  if ((rc == 0)); then
    result="no crash"
  else
    failed=1
    if grep -q 'ERROR: libFuzzer: timeout' "$log"; then
      result="timeout (an input ran over 60 s): $artifact"
    elif grep -q 'ERROR: libFuzzer: out-of-memory' "$log"; then
      result="out of memory: $artifact"
    elif [[ -n $artifact ]]; then
      result="CRASH: $artifact"
    elif ((rc == 124 || rc == 137)); then
      result="did not finish within ${seconds} s + 300 s"
    else
      result="failed (exit status $rc), see $log"
    fi
  fi
  line=$(printf '%s UTC\t%s\t%s s\t%s executions\t%s' "$started" "$name" "$seconds" \
    "${execs:-?}" "$result")
  echo "$line" >>"$logs/runs.log"
  results+=("$line")
done

echo
printf '%s\n' "${results[@]}" | column -t -s $'\t'
if ((failed)); then
  echo "tests/fuzz.sh: a target failed; reproduce with its binary and the artifact (crate README)" >&2
  exit 1
fi
