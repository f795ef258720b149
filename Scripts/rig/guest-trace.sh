#!/bin/bash
# Limitless rig, inside the guest: record the kernel's trace events named in RIG_TRACE around one
# suite (`Scripts/rig.sh test` calls `start` before each suite and `stop NAME` after it).
#   RIG_TRACE="sched:sched_switch sched:sched_wakeup signal:signal_generate" Scripts/rig.sh test standby
# leaves .build-rig/trace-standby.txt: who ran on which vCPU when, who woke whom, who signalled
# whom, with the guest's timestamps. That is how the 9p round trips at a process's exit and the
# process switches of a depth-1 I/O were found (README, issues 4 and 5). Needs RIG_TRACE,
# RIG_RUN_DIR (from "$RIG_ENV"); RIG_TRACE_BUFFER_KB (per vCPU, default 32768); RIG_TRACEFS
# points at another tracefs (the script tests use a plain directory).
set -u
# shellcheck source=/dev/null
[[ -n ${RIG_ENV:-} && -r $RIG_ENV ]] && . "$RIG_ENV"
[[ -n ${RIG_TRACE:-} ]] || exit 0
tracefs=${RIG_TRACEFS:-/sys/kernel/tracing}
say() { echo "rig: RIG_TRACE: $*"; }

case ${1:-} in
start)
	if [[ -z ${RIG_TRACEFS:-} ]] && ! mountpoint -q "$tracefs"; then
		mount -t tracefs nodev "$tracefs" || { say "cannot mount tracefs at $tracefs; not tracing"; exit 1; }
	fi
	echo 0 >"$tracefs/tracing_on"
	echo "${RIG_TRACE_BUFFER_KB:-32768}" >"$tracefs/buffer_size_kb"
	: >"$tracefs/trace"
	: >"$tracefs/set_event"
	enabled=0
	for event in $RIG_TRACE; do
		if grep -qxF -- "$event" "$tracefs/available_events"; then
			echo "$event" >>"$tracefs/set_event" && enabled=$((enabled + 1))
		else
			say "no event '$event' in this kernel (the names are in $tracefs/available_events, as subsystem:event)"
		fi
	done
	((enabled > 0)) || { say "no event to record; not tracing"; exit 1; }
	echo 1 >"$tracefs/tracing_on"
	;;
stop)
	name=${2:?stop needs the suite name}
	echo 0 >"$tracefs/tracing_on"
	out="$RIG_RUN_DIR/trace-$name.txt"
	cat "$tracefs/trace" >"$out"
	: >"$tracefs/set_event"
	lost=$(cat "$tracefs"/per_cpu/cpu*/stats 2>/dev/null | awk '$1 == "overrun:" { n += $2 } END { print n + 0 }')
	note=""
	((lost > 0)) && note=" ($lost lost: raise RIG_TRACE_BUFFER_KB)"
	say "$(grep -vc '^#' "$out") events of suite $name saved$note"
	;;
*)
	echo "usage: guest-trace.sh start | stop SUITE" >&2
	exit 2
	;;
esac
