#!/bin/sh
# Runs the libFuzzer targets for tests/fuzz/fuzz.mk.
#
#   run.sh fuzz BUILD SECONDS TARGET:MAXLEN...  fuzz each for SECONDS on a
#                                               scratch copy of its seeds
#   run.sh regress BUILD TARGET:MAXLEN...       replay seeds and past crashes
#
# A target's seeds are tests/fuzz/corpus/TARGET/, its past crashes
# tests/fuzz/regressions/TARGET/, its dictionary tests/fuzz/TARGET.dict.
# Exits 1 if any target crashed, leaked, hung or ran out of memory.
set -u

here=tests/fuzz
mode=$1
build=$2
shift 2
if [ "$mode" = fuzz ]; then
	seconds=$1
	shift
fi

stat() {
	sed -n "s/^stat::$1: *\([0-9][0-9]*\).*/\1/p" "$2" | tail -n 1
}

failed=""
for arg in "$@"; do
	t=${arg%%:*}
	maxlen=${arg#*:}
	bin=$build/$t
	run=$build/$mode/$t
	dict=""
	[ -f "$here/$t.dict" ] && dict="-dict=$here/$t.dict"
	rm -rf "$run"
	mkdir -p "$run/corpus"
	if [ "$mode" = regress ]; then
		files=$(find "$here/corpus/$t" "$here/regressions/$t" \
		    -type f 2>/dev/null | sort)
		n=$(printf '%s\n' "$files" | grep -c .)
		if [ "$n" -eq 0 ]; then
			echo "$t: no inputs to replay"
			continue
		fi
		# Files, not folders: libFuzzer runs each once and adds nothing.
		# shellcheck disable=SC2086
		if "$bin" -timeout=10 -artifact_prefix="$run/" $files \
		    >"$run/log" 2>&1; then
			echo "$t: $n inputs replayed, no crash"
		else
			echo "$t: FAILED replaying $n inputs; $run/log:"
			grep -E '^(Running:|==[0-9]+==ERROR|SUMMARY|.*runtime error)' \
			    "$run/log" | tail -n 8
			failed="$failed $t"
		fi
		continue
	fi
	cp "$here/corpus/$t/"* "$run/corpus/" 2>/dev/null
	# shellcheck disable=SC2086
	"$bin" -max_total_time="$seconds" -max_len="$maxlen" \
	    -timeout=10 -print_final_stats=1 -artifact_prefix="$run/" \
	    $dict "$run/corpus" >"$run/log" 2>&1
	rc=$?
	execs=$(stat number_of_executed_units "$run/log")
	rate=$(stat average_exec_per_sec "$run/log")
	files=$(find "$run/corpus" -type f | wc -l)
	cov=$(grep -E '^#[0-9]+' "$run/log" | tail -n 1 |
	    sed -n 's/.*cov: \([0-9]*\) ft: \([0-9]*\) corp: \([^ ]*\).*/cov \1, ft \2, corp \3/p')
	artifacts=$(find "$run" -maxdepth 1 -type f \
	    \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' \
	    -o -name 'oom-*' \))
	if [ $rc -ne 0 ] || [ -n "$artifacts" ]; then
		echo "$t: FAILED (exit $rc) after ${execs:-?} executions; $run/log:"
		grep -E '^(==[0-9]+==ERROR|SUMMARY|.*runtime error|artifact_prefix|Test unit written)' \
		    "$run/log" | tail -n 8
		failed="$failed $t"
	else
		echo "$t: ${execs:-?} executions in ${seconds}s (${rate:-?}/s), corpus $files files ($cov)"
	fi
done
if [ -n "$failed" ]; then
	echo "fuzz: failed:$failed"
	exit 1
fi
exit 0
