# shellcheck shell=bash
# Tests/HIL/lib.sh: what the rig's shell suites (Tests/HIL/*-suite.sh) and the in-guest halves of
# the bench scripts (Scripts/*-bench.sh --in-guest) share: counting results, the closing line,
# stopping what a suite started, waiting for things, finding system tools. Source it from the
# repository root; it only defines variables and functions and changes no shell option.
#
# A suite keeps the pids of the servers it starts in variables (0 when not running) and names
# them, in the order they are to be stopped, in HIL_PIDS; it may define hil_on_finish for other
# clean-up (an unmount) run first; `work`, when set, is the temporary directory to remove.

passed=0
failed=0
HIL_PIDS=()

# result STATUS LABEL: "PASS LABEL" when STATUS is 0, else "FAIL LABEL"; counts it and returns
# STATUS, so that `result $? "..." || { evidence; finish; }` shows what failed (and stops where
# going on makes no sense).
result() {
	if (($1 == 0)); then
		passed=$((passed + 1))
		echo "PASS $2"
	else
		failed=$((failed + 1))
		echo "FAIL $2"
	fi
	return "$1"
}

# finish: stops what the suite left running, removes $work, prints the "N passed, N failed"
# line the rig reads and exits (1 on any failure).
finish() {
	local name pid
	if declare -F hil_on_finish >/dev/null; then hil_on_finish; fi
	for name in "${HIL_PIDS[@]}"; do
		pid=${!name:-0}
		((pid > 0)) && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	done
	[[ -n ${work:-} ]] && rm -rf "$work"
	echo "$passed passed, $failed failed"
	((failed == 0))
	exit
}

# require_built DIR PROGRAM...: a FAIL and finish unless every PROGRAM is built in DIR.
require_built() {
	local dir=$1 program
	shift
	for program in "$@"; do
		[[ -x $dir/$program ]] || { result 1 "$dir/$program not found: run swift build -c release first"; finish; }
	done
}

# wait_until SECONDS COMMAND...: polls COMMAND every 0.1 s; fails once SECONDS have passed.
# shellcheck source=Scripts/lib/wait.sh
source "${BASH_SOURCE[0]%/*}/../../Scripts/lib/wait.sh"

is_socket() { [[ -S $1 ]]; }

# wait_socket PATH [SECONDS]: until a server listens at PATH (30 s unless told).
wait_socket() { wait_until "${2:-30}" is_socket "$1"; }

# sbin NAME: where a system tool (e2fsprogs: /sbin on some distributions, /usr/sbin on others) is.
sbin() {
	local dir
	for dir in /usr/sbin /sbin /usr/bin /bin; do [[ -x $dir/$1 ]] && { echo "$dir/$1"; return 0; }; done
	return 1
}

# indent: standard input indented under the PASS/FAIL line it belongs to.
indent() { sed 's/^/     /'; }

# The project's tools on the suite's runtime directory (needs bin, the built programs, and work).
# shellcheck disable=SC2154 # bin is the sourcing suite's
fs() { "$bin/limitless-fs" "$@" --runtime-dir "$work"; }
storage_tool() { "$bin/limitless-storage" "$@" --runtime-dir "$work"; }
ctl() { "$bin/serverctl" "$@" --runtime-dir "$work"; }

# server_pid NAME: the pid the supervisor reports for server NAME, or nothing.
server_pid() { ctl status "$1" --json 2>/dev/null | grep -o '"pid":[0-9]*' | grep -o '[0-9]*$'; }
