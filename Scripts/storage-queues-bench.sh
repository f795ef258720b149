#!/usr/bin/env bash
# Scripts/storage-queues-bench.sh: storage_server with one I/O queue against two, same run.
#
#   Scripts/storage-queues-bench.sh [--seconds N] [--poll]   on the host: one rig boot, prints the table
#   Scripts/storage-queues-bench.sh --in-guest               inside the rig guest
#
# Two ring clients at once (`limitless-storage bench --ring`, 4 KiB random reads, queue depth 32
# each, nsid 1) against `storage_server --queues 1` and then `--queues 2`: with one queue both
# rings are polled by one thread on I/O queue 1; with two the second ring goes to the second
# thread and queue. Figures only (the ratio is 2 queues / 1 queue, total IOPS). Release binaries
# must be built (RIG_BUILD=0 uses them as they are). Under TCG the guest's vCPUs share the host's
# cores with the emulated device: more threads need not mean more IOPS.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
# shellcheck source=Scripts/lib/bench.sh
source Scripts/lib/bench.sh
# shellcheck source=Tests/HIL/lib.sh
source Tests/HIL/lib.sh

if [[ ${1:-} != --in-guest ]]; then
	seconds=4 poll=
	while (($#)); do
		case $1 in
		--seconds) seconds=${2:?--seconds needs a value}; shift 2 ;;
		--poll) poll=--poll; shift ;;
		-h | --help) bench_help "$0"; exit 0 ;;
		*) echo "storage-queues-bench: unknown argument $1" >&2; exit 2 ;;
		esac
	done
	[[ $seconds =~ ^[0-9]+$ ]] || { echo "storage-queues-bench: --seconds takes whole seconds" >&2; exit 2; }
	exec Scripts/rig.sh --timeout $((600 + 8 * seconds)) run -- env RIG_QBENCH_SECONDS="$seconds" RIG_QBENCH_POLL="$poll" \
		bash Scripts/storage-queues-bench.sh --in-guest
fi

seconds=${RIG_QBENCH_SECONDS:-4}
poll=${RIG_QBENCH_POLL:-}
device=${RIG_QBENCH_DEVICE:-0000:00:03.0}
bin=.build/release
work=$(mktemp -d /tmp/limitless-qbench-XXXXXX)
trap 'rm -rf "$work"' EXIT
declare -A total
status=0
for queues in 1 2; do
	rm -f "$work/storage.sock"
	# shellcheck disable=SC2086 # $poll is empty or one flag
	"$bin/storage_server" --device "$device" --runtime-dir "$work" --queues "$queues" $poll >"$work/server-$queues.log" 2>&1 &
	server=$!
	wait_socket "$work/storage.sock" 60 || { echo "storage_server --queues $queues did not answer"; tail -20 "$work/server-$queues.log"; exit 1; }
	for client in 1 2; do
		"$bin/limitless-storage" bench --runtime-dir "$work" --nsid 1 --seconds "$seconds" --queue-depth 32 --read --ring --json \
			>"$work/client-$queues-$client.json" 2>&1 &
		eval "client_$client=\$!"
	done
	# shellcheck disable=SC2154 # set by eval above
	wait "$client_1" "$client_2"
	kill -TERM "$server"
	wait "$server" || { echo "storage_server --queues $queues: exit $?"; status=1; }
	sum=0
	for client in 1 2; do
		iops=$(sed -nE 's/.*"iops":([0-9]+).*/\1/p' "$work/client-$queues-$client.json")
		p99=$(sed -nE 's/.*"latency_p99_us":([0-9.]+).*/\1/p' "$work/client-$queues-$client.json")
		[[ -n $iops ]] || { echo "client $client (--queues $queues) printed:"; cat "$work/client-$queues-$client.json"; status=1; iops=0; }
		echo "--queues $queues client $client: $iops IOPS, p99 ${p99:-?} us"
		sum=$((sum + iops))
	done
	total[$queues]=$sum
	grep -E "serving|served by|stopped" "$work/server-$queues.log" | sed 's/^/    server: /'
done
echo "==== storage-queues-bench: two ring clients, 4 KiB random read, QD32 each, ${seconds} s, ${poll:-interrupts}"
printf '%-10s %12s\n' queues "total IOPS"
printf '%-10s %12s\n' 1 "${total[1]}" 2 "${total[2]}"
((total[1] > 0)) && awk -v a="${total[2]}" -v b="${total[1]}" 'BEGIN { printf "ratio 2/1: %.2f\n", a / b }'
exit $status
