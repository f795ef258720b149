#!/usr/bin/env bash
# Scripts/storage-bench.sh: our NVMe driver against the Linux kernel's nvme driver, side by side in
# one rig boot, on two identical emulated disks (Hardware/rig-bench.conf).
#
#   Scripts/storage-bench.sh [--seconds N]    on the host: boots the bench profile, prints the table
#   Scripts/storage-bench.sh --in-guest       inside the rig guest (the profile's suite runs this)
#
# Workloads: 4 KiB random read and random write, queue depth 1 and 32, fixed time each, over the
# whole 64 MiB namespace on both sides. Engines:
#   kernel io_uring        fio --ioengine=io_uring --direct=1 (interrupt completions)
#   kernel io_uring hipri  the same with --hipri (polled completions; nvme.poll_queues=1)
#   kernel libaio          fio --ioengine=libaio --direct=1
#   ours driver            limitless-hil nvme-bench: the driver in-process, no IPC, polled (the
#                          queue created with interrupts off, as the kernel's poll queues)
#   ours driver-msix-on    the same polled queue created with its MSI-X vector enabled (each
#                          completion also raises an interrupt nobody waits for; how ours ran before)
#   ours storage_server    limitless-storage bench against storage_server --poll, over IPC, data
#                          inline in the messages (copied through the server's bounce buffers);
#                          requests go to the NVMe queue as they come, answered at completion
#   ours one-at-a-time     the same with storage_server --one-at-a-time: each message-path
#                          request waited for before the next is read (how it was before the
#                          IPC server had deferred answers)
#   ours zero-copy         the same with a registered shared buffer (--zero-copy): the device
#                          reads and writes the client's pages
#   ours ring              the storage server's ring path (--ring): requests and completions in
#                          shared memory, polled on both sides, data zero copy; one message to
#                          attach, none per I/O
#   ours ring-spin         the ring path with storage_server --ring-wait spin: while only the
#                          device can make progress (every completion read by the client) the
#                          server spins on the NVMe queue instead of yielding to the client
# Placement: fio and the in-process driver run where the guest scheduler puts them (the kernel
# engines get their own best case). The message paths pin the server and its client to guest
# CPU 1 together: under TCG a wakeup across vCPUs costs milliseconds, which would measure the
# emulator's scheduling rather than the driver. The ring path too: the server polls and yields
# the CPU when idle, the client polls its completions and yields, so each hands the CPU straight
# to the other (measured in this rig: server and client polling on two vCPUs did worse at
# both depths, with p99 in the tens of milliseconds).
# The ratio column is ours / the best kernel engine of the same workload and depth. Under TCG the
# absolute figures are emulation-bound; only the side-by-side comparison means anything.
# Figures only: the suite passes when every engine ran and printed figures.
# shellcheck disable=SC2001 # sed indents multi-line output
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
# shellcheck source=Scripts/lib/bench.sh
source Scripts/lib/bench.sh
# shellcheck source=Tests/HIL/lib.sh
source Tests/HIL/lib.sh

if [[ ${1:-} != --in-guest ]]; then
	seconds=4
	while (($#)); do
		case $1 in
		--seconds) seconds=${2:?--seconds needs a value}; shift 2 ;;
		-h | --help) bench_help "$0"; exit 0 ;;
		*) echo "storage-bench: unknown argument $1" >&2; exit 2 ;;
		esac
	done
	[[ $seconds =~ ^[0-9]+$ ]] || { echo "storage-bench: --seconds takes whole seconds" >&2; exit 2; }
	export RIG_BENCH_SECONDS=$seconds
	bench_on_host bench $((900 + 32 * seconds)) storagebench storage-bench
	exit
fi

# ---- in the guest ------------------------------------------------------------------------------
seconds=${RIG_BENCH_SECONDS:-4}
cpu=${RIG_BENCH_CPU:-1}             # the server's CPU (and the message clients')
ring_cpu=${RIG_BENCH_RING_CPU:-$cpu} # the ring client's CPU
ours=${RIG_BENCH_OURS:-0000:00:03.0}
kernel_bdf=${RIG_BENCH_KERNEL:-0000:00:06.0}
bin=.build/release
work=$(mktemp -d /tmp/limitless-storagebench-XXXXXX)
results=$work/results
: >"$results"
server=0
HIL_PIDS=(server)
require_built "$bin" limitless-hil storage_server limitless-storage
command -v fio >/dev/null
result $? "fio is installed ($(fio --version 2>/dev/null))" || finish

# The kernel's block device for the second controller (the nvme probe finishes asynchronously).
dev=$(kernel_nvme_block_device "$kernel_bdf")
result $? "kernel nvme driver on $kernel_bdf: block device ${dev:-none}" || finish
bdev=${dev#/dev/}
echo "     poll_queues=$(cat /sys/module/nvme/parameters/poll_queues 2>/dev/null)" \
	"io_poll=$(cat "/sys/block/$bdev/queue/io_poll" 2>/dev/null)" \
	"logical_block_size=$(cat "/sys/block/$bdev/queue/logical_block_size")" \
	"size=$(($(cat "/sys/block/$bdev/size") * 512 >> 20)) MiB" \
	"hardware queues=$(set -- "/sys/block/$bdev/mq"/*; echo $#)"
region_mib=$(($(cat "/sys/block/$bdev/size") * 512 >> 20))

# record ENGINE RW QD IOPS P50_US P99_US
record() { echo "$*" >>"$results"; }

run_fio() { # LABEL ENGINE RW QD [EXTRA...]
	local label=$1 engine=$2 rw=$3 qd=$4 out=$work/fio.json line
	shift 4
	if fio --name=bench --filename="$dev" --direct=1 --rw="$rw" --bs=4k --iodepth="$qd" --ioengine="$engine" "$@" \
		--size="${region_mib}M" --time_based=1 --runtime="$seconds" --norandommap=1 --randrepeat=0 \
		--lat_percentiles=1 --output-format=json >"$out" 2>"$work/fio.err"; then
		line=$(python3 - "$out" "${rw#rand}" <<'EOF'
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0][sys.argv[2]]
lat = job.get("lat_ns", {}).get("percentile") or job["clat_ns"]["percentile"]
print("%d %.1f %.1f" % (round(job["iops"]), lat["50.000000"] / 1000, lat["99.000000"] / 1000))
EOF
		)
		if [[ -n $line ]]; then
			# shellcheck disable=SC2086 # three fields on purpose
			record "$label" "$rw" "$qd" $line
			result 0 "$label $rw QD$qd: $line (IOPS p50_us p99_us)"
			return
		fi
	fi
	result 1 "$label $rw QD$qd: fio failed; it printed:"
	cat "$work/fio.err" "$out" | indent | head -20
	record "$label" "$rw" "$qd" failed - -
}

run_driver() { # RW QD [LABEL FLAG...]: ours in-process (no IPC)
	local rw=$1 qd=$2 label=${3:-ours-driver} out line iops p50 p99
	shift $(($# < 3 ? $# : 3))
	out=$("$bin/limitless-hil" nvme-bench --device "$ours" --nsid 1 --seconds "$seconds" --queue-depth "$qd" --rw "$rw" "$@" 2>&1)
	line=$(grep '^bench engine=driver' <<<"$out" | tail -1)
	if [[ -n $line ]]; then
		iops=$(sed -E 's/.* iops=([0-9]+).*/\1/' <<<"$line")
		p50=$(sed -E 's/.* p50_us=([0-9.]+).*/\1/' <<<"$line")
		p99=$(sed -E 's/.* p99_us=([0-9.]+).*/\1/' <<<"$line")
		record "$label" "$rw" "$qd" "$iops" "$p50" "$p99"
		result 0 "$label $rw QD$qd: $iops $p50 $p99 (IOPS p50_us p99_us)"
	else
		record "$label" "$rw" "$qd" failed - -
		result 1 "$label $rw QD$qd: limitless-hil nvme-bench printed:"
		indent <<<"$out" | tail -20
	fi
}

run_server() { # RW QD [--one-at-a-time | --ring-wait-spin]: ours behind storage_server over IPC (what clients really use), three data paths
	local rw=$1 qd=$2 variant=${3:-} mode=--read path paths="inline zero-copy ring" label client_cpu out iops p50 p99 flags=()
	[[ $rw == randwrite ]] && mode=--write
	case $variant in
	--one-at-a-time) paths=inline flags=(--one-at-a-time) ;;
	--ring-wait-spin) paths=ring flags=(--ring-wait spin) ;;
	esac
	rm -f "$work/storage.sock"
	taskset -c "$cpu" "$bin/storage_server" --device "$ours" --runtime-dir "$work" --poll "${flags[@]}" >"$work/server.log" 2>&1 &
	server=$!
	if ! wait_socket "$work/storage.sock" 60; then
		result 1 "storage_server --poll on $ours did not answer"
		tail -20 "$work/server.log"
		finish
	fi
	for path in $paths; do
		label='ours-storage_server'
		[[ $variant == --one-at-a-time ]] && label='ours-one-at-a-time'
		client_cpu=$cpu
		[[ $path == zero-copy ]] && label='ours-zero-copy'
		[[ $path == ring ]] && label='ours-ring' && client_cpu=$ring_cpu
		[[ $variant == --ring-wait-spin ]] && label='ours-ring-spin'
		out=$(taskset -c "$client_cpu" "$bin/limitless-storage" bench --runtime-dir "$work" --nsid 1 --seconds "$seconds" \
			--queue-depth "$qd" $mode --"$path" --json 2>&1)
		iops=$(sed -nE 's/.*"iops":([0-9]+).*/\1/p' <<<"$out")
		p50=$(sed -nE 's/.*"latency_p50_us":([0-9.]+).*/\1/p' <<<"$out")
		p99=$(sed -nE 's/.*"latency_p99_us":([0-9.]+).*/\1/p' <<<"$out")
		if [[ -n $iops && -n $p50 && -n $p99 ]]; then
			record "$label" "$rw" "$qd" "$iops" "$p50" "$p99"
			result 0 "$label $rw QD$qd: $iops $p50 $p99 (IOPS p50_us p99_us)"
		else
			record "$label" "$rw" "$qd" failed - -
			result 1 "$label $rw QD$qd: limitless-storage bench printed:"
			indent <<<"$out" | tail -20
		fi
	done
	kill -TERM "$server"
	wait "$server"
	result $? "storage_server stops on SIGTERM with exit 0 ($(grep -oE 'stopped.*' "$work/server.log" | head -1))"
	server=0
}

# Each workload and depth runs every engine back to back, so the kernel's and ours see the same
# host load (on a shared host it drifts by minutes).
for rw in randread randwrite; do
	for qd in 1 32; do
		run_fio "kernel-io_uring" io_uring "$rw" "$qd"
		run_fio "kernel-io_uring-hipri" io_uring "$rw" "$qd" --hipri=1
		run_fio "kernel-libaio" libaio "$rw" "$qd"
		run_driver "$rw" "$qd"
		run_driver "$rw" "$qd" ours-driver-msix-on --interrupts-while-polling
		run_server "$rw" "$qd"
		run_server "$rw" "$qd" --one-at-a-time
		run_server "$rw" "$qd" --ring-wait-spin
	done
done

echo "==== storage-bench table: 4 KiB random I/O, ${seconds} s per cell, ${region_mib} MiB region, two identical QEMU NVMe disks, TCG"
sort -k2,2 -k3,3n -s "$results" | awk '
	{ key = $2 " " $3; rows[++n] = $0
	  if ($1 ~ /^kernel/ && $4 != "failed" && $4 + 0 > best[key]) best[key] = $4 + 0 }
	END {
		printf "%-10s %3s  %-22s %8s %9s %9s  %s\n", "workload", "QD", "engine", "IOPS", "p50 us", "p99 us", "ours/kernel-best"
		for (i = 1; i <= n; i++) {
			split(rows[i], f, " "); key = f[2] " " f[3]
			ratio = "-"
			if (f[1] ~ /^ours/ && f[4] != "failed" && best[key] > 0) ratio = sprintf("%.2f", f[4] / best[key])
			printf "%-10s %3s  %-22s %8s %9s %9s  %s\n", f[2], f[3], f[1], f[4], f[5], f[6], ratio
		}
	}'
echo "==== end"
finish
