#!/bin/sh
# run.sh SECONDS TARGET... - run each libFuzzer target of build/fuzz for
# SECONDS on a scratch copy of spec/fuzz/corpus/TARGET (the seeds in git
# are never written), one after another, and print one summary line per
# target.  Exit status 1 when any target crashed, tripped a sanitizer,
# failed a differential check, ran out of memory or timed out on one
# input; its reproducer is kept as spec/tmp/fuzz/TARGET-crash-* (or
# -timeout-*, -oom-*) and its log as spec/tmp/fuzz/TARGET.log.
# Reproduce: build/fuzz/fuzz_TARGET spec/tmp/fuzz/TARGET-crash-...
#
# FUZZ_KEEP_GOING=1 does not stop at the first finding (libFuzzer's fork
# mode ignoring crashes): every reproducer is kept, and the distinct
# findings are listed with how many reproducers each has.
set -u
secs=$1
shift
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$root/spec/tmp/fuzz
mkdir -p "$out"

# Longest input per target: a head fills the 16 KiB client buffer.
max_len() {
    case $1 in
    head | connect) echo 20000 ;;
    socks5 | socks5_in | socks4) echo 1024 ;;
    *) echo 8192 ;;
    esac
}

# The Lua targets keep a LuaJIT state across inputs, so nearly every
# input ends with more allocations than frees; libFuzzer would then scan
# for leaks after each one.  They are checked at exit only.
leak_flag() {
    case $1 in
    config | admin_json) echo "-detect_leaks=0" ;;
    *) echo "-detect_leaks=1" ;;
    esac
}

fail=0
for t in "$@"; do
    bin=$root/build/fuzz/fuzz_$t
    seeds=$root/spec/fuzz/corpus/$t
    if [ ! -x "$bin" ] || [ ! -d "$seeds" ]; then
        echo "fuzz $t: FAILED: no $bin or no $seeds"
        fail=1
        continue
    fi
    work=$(mktemp -d "$out/$t.corpus.XXXXXX")
    cp "$seeds"/* "$work"/
    nseeds=$(ls "$work" | wc -l)
    rm -f "$out/$t"-crash-* "$out/$t"-timeout-* "$out/$t"-oom-* "$out/$t"-leak-*
    dict=
    [ -f "$root/spec/fuzz/$t.dict" ] && dict="-dict=$root/spec/fuzz/$t.dict"
    log=$out/$t.log
    keep=
    [ "${FUZZ_KEEP_GOING:-0}" = 1 ] && keep="-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1"
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
    UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
        "$bin" -max_total_time="$secs" -timeout=25 -rss_limit_mb=2048 \
        -max_len="$(max_len "$t")" "$(leak_flag "$t")" -print_final_stats=1 \
        -artifact_prefix="$out/$t-" $keep $dict "$work" >"$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    [ -n "$runs" ] || runs=$(grep -o '^#[0-9]*' "$log" | tail -n 1 | tr -d '#')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
    ncorpus=$(ls "$work" | wc -l)
    rm -rf "$work"
    arts=$(ls "$out/$t"-crash-* "$out/$t"-timeout-* "$out/$t"-oom-* "$out/$t"-leak-* 2>/dev/null)
    if [ -n "$keep" ] && [ -n "$arts" ]; then
        echo "fuzz $t: FAILED: $(echo "$arts" | wc -l) reproducers in ${secs} s (log $log):"
        for a in $arts; do
            "$bin" "$a" 2>&1 | grep -a -m 1 -E 'FINDING|ERROR: (AddressSanitizer|LeakSanitizer)|runtime error|ERROR: libFuzzer: timeout' |
                sed 's/["(].*//; s/ at pc .*//' | cut -c 1-170
        done | sort | uniq -c | sort -rn | sed "s/^/fuzz $t:   /"
        fail=1
    elif [ "$rc" -eq 0 ] && [ -z "$arts" ]; then
        echo "fuzz $t: ok, ${runs:-?} runs in ${secs} s, coverage ${cov:-?} edges ${ft:-?} features, corpus $nseeds -> $ncorpus"
    else
        what=$(grep -a -m 1 -E 'FINDING|ERROR: (AddressSanitizer|libFuzzer|LeakSanitizer)|runtime error' "$log")
        art=$(ls "$out/$t"-* 2>/dev/null | grep -v '\.log$' | head -n 1)
        echo "fuzz $t: FAILED after ${runs:-?} runs: ${what:-exit $rc}"
        echo "fuzz $t:   reproducer ${art:-none}, log $log"
        fail=1
    fi
done
exit $fail
