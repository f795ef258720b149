#!/usr/bin/env bash
# Scripts/vfs-bench.sh: our file-system stack (vfs_server over storage_server over our NVMe driver)
# against the Linux kernel's ext3 (ext4 driver, nvme driver), side by side in one rig boot, on two
# identical emulated disks holding the same ext3 image (Hardware/rig-vfsbench.conf). Issue 6.
#
#   Scripts/vfs-bench.sh [--files N] [--mib M] [--rounds R]   on the host: boots the profile, prints the table
#   Scripts/vfs-bench.sh --in-guest              inside the rig guest (the profile's suite runs this)
#
# One image: mke2fs -t ext3 -b 4096 over the whole 64 MiB namespace, written onto both disks
# (ours with limitless-storage write, the kernel's with dd). Both sides journal metadata in
# ordered mode (file data on disk before the commit naming it): the kernel's is mounted with
# mount -t ext3 -o data=ordered, ours is served by vfs_server --storage, which journals an ext3
# image (a commit per fsync and per write-back). The same workload runs on both
# (limitless-bench vfs, --posix on the mount, --server on vfs_server):
#   create  N x open(O_CREAT|O_EXCL|O_WRONLY) + close        ops/s, p50, p99 per op
#   stat    N x stat of those files                         ops/s, p50, p99
#   unlink  N x unlink of those files                       ops/s, p50, p99
#   write   M MiB in 128 KiB writes, then fsync (timed to fsync's return)          MB/s (10^6 B/s)
#   read    the same file, 128 KiB reads, cold                                      MB/s
# Cold read: the kernel side runs sync and echo 3 > /proc/sys/vm/drop_caches between the write
# and the read; ours stops vfs_server (SIGTERM: write-back, clean unmount) and starts a new one,
# so its page cache and inode cache are empty (storage_server has no cache).
# Placement: every process of both sides (the benchmark, vfs_server, storage_server) is pinned to
# guest CPU 1: under TCG a wakeup across vCPUs costs milliseconds (Scripts/storage-bench.sh).
# Afterwards both file systems are unmounted and e2fsck -fn checks both disks (ours read back
# with limitless-storage read). Under TCG absolute figures are emulation-bound; only the ratio
# column means anything. Figures only: the suite passes when everything ran and both disks are clean.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
# shellcheck source=Scripts/lib/bench.sh
source Scripts/lib/bench.sh
# shellcheck source=Tests/HIL/lib.sh
source Tests/HIL/lib.sh

if [[ ${1:-} != --in-guest ]]; then
	files=1000
	mib=16
	rounds=5
	while (($#)); do
		case $1 in
		--files) files=${2:?--files needs a value}; shift 2 ;;
		--mib) mib=${2:?--mib needs a value}; shift 2 ;;
		--rounds) rounds=${2:?--rounds needs a value}; shift 2 ;;
		-h | --help) bench_help "$0"; exit 0 ;;
		*) echo "vfs-bench: unknown argument $1" >&2; exit 2 ;;
		esac
	done
	[[ $files =~ ^[0-9]+$ && $mib =~ ^[0-9]+$ && $rounds =~ ^[1-9][0-9]*$ ]] ||
		{ echo "vfs-bench: --files, --mib and --rounds take whole numbers" >&2; exit 2; }
	export RIG_VFSBENCH_FILES=$files RIG_VFSBENCH_MIB=$mib RIG_VFSBENCH_ROUNDS=$rounds
	bench_on_host vfsbench 1200 vfsbench vfs-bench
	exit
fi

# ---- in the guest ------------------------------------------------------------------------------
files=${RIG_VFSBENCH_FILES:-1000}
mib=${RIG_VFSBENCH_MIB:-16}
rounds=${RIG_VFSBENCH_ROUNDS:-5}
cpu=${RIG_VFSBENCH_CPU:-1}
ours=${RIG_VFSBENCH_OURS:-0000:00:03.0}
kernel_bdf=${RIG_VFSBENCH_KERNEL:-0000:00:06.0}
bin=.build/release
work=$(mktemp -d /tmp/limitless-vfsbench-XXXXXX)
mnt=$work/kernel
results=$work/results
: >"$results"
storage=0
vfs=0
mounted=0
HIL_PIDS=(vfs storage)
hil_on_finish() { if ((mounted)); then umount "$mnt"; fi; }
stop() { # PID: SIGTERM and wait; the exit status
	kill -TERM "$1" 2>/dev/null
	wait "$1"
}
pinned() { taskset -c "$cpu" "$@"; }
bench() { pinned "$bin/limitless-bench" vfs --files "$files" --mebibytes "$mib" "$@"; }
# run_bench LOG ARGS...: the workload's lines into the results, its output shown.
run_bench() {
	local log=$1
	shift
	bench "$@" >"$log" 2>&1
	local status=$?
	indent <"$log"
	grep '^vfsbench ' "$log" >>"$results"
	return $status
}
start_vfs() {
	rm -f "$work/vfs.sock"
	# taskset itself, not a function: $! must be the pid that becomes the server (taskset execs
	# it), or SIGTERM would stop a wrapper subshell and leave the server running.
	taskset -c "$cpu" "$bin/vfs_server" --storage storage --nsid 1 --runtime-dir "$work" >>"$work/vfs.log" 2>&1 &
	vfs=$!
	wait_socket "$work/vfs.sock" 60
}

require_built "$bin" storage_server vfs_server limitless-storage limitless-bench
mke2fs=$(sbin mke2fs) && e2fsck=$(sbin e2fsck)
result $? "e2fsprogs found ($("$mke2fs" -V 2>&1 | head -1))" || finish

# The kernel's block device for the second controller (the nvme probe finishes asynchronously).
dev=$(kernel_nvme_block_device "$kernel_bdf")
result $? "kernel nvme driver on $kernel_bdf: block device ${dev:-none}" || finish
bdev=${dev#/dev/}
bytes=$(($(cat "/sys/block/$bdev/size") * 512))
echo "     logical_block_size=$(cat "/sys/block/$bdev/queue/logical_block_size") size=$((bytes >> 20)) MiB"

# One image for both disks: the whole namespace, 4 KiB blocks.
"$mke2fs" -q -F -t ext3 -b 4096 "$work/fs.img" $((bytes / 4096)) >"$work/mke2fs.out" 2>&1
result $? "mke2fs made a $((bytes >> 20)) MiB ext3 image with 4 KiB blocks" || { cat "$work/mke2fs.out"; finish; }

dd if="$work/fs.img" of="$dev" bs=1M oflag=direct conv=fsync status=none
result $? "the image is on $dev (dd)" || finish

taskset -c "$cpu" "$bin/storage_server" --device "$ours" --runtime-dir "$work" --poll >"$work/storage.log" 2>&1 &
storage=$!
wait_socket "$work/storage.sock" 60
result $? "storage_server --poll on $ours answers" || { tail -20 "$work/storage.log"; finish; }
"$bin/limitless-storage" write --nsid 1 --lba 0 --input "$work/fs.img" --runtime-dir "$work" >"$work/write.out" 2>&1
result $? "the image is on namespace 1 ($(head -1 "$work/write.out"))" || { cat "$work/write.out"; finish; }

mkdir -p "$mnt"
mount -t ext3 -o data=ordered "$dev" "$mnt"
result $? "mount -t ext3 -o data=ordered $dev ($(grep " $mnt " /proc/mounts | cut -d' ' -f3,4))" || finish
mounted=1
start_vfs
result $? "vfs_server mounts namespace 1 through storage_server ($(grep -m1 -o 'mounted ext3 at /' "$work/vfs.log"))" ||
	{ tail -20 "$work/vfs.log"; finish; }

# Rounds alternate the sides (kernel, ours, kernel, ours...), so load from elsewhere on the shared
# host falls on both rather than on whichever side ran during it; the table takes the medians.
for round in $(seq 1 "$rounds"); do
	# The kernel: metadata and write, caches dropped, the cold read, clean-up.
	run_bench "$work/k1" --posix "$mnt" --phases metadata,write --label "kernel round=$round"
	result $? "round $round, kernel ext3: create/stat/unlink and sequential write"
	sync && echo 3 >/proc/sys/vm/drop_caches
	result $? "round $round, kernel: sync; echo 3 > /proc/sys/vm/drop_caches"
	run_bench "$work/k2" --posix "$mnt" --phases read,cleanup --label "kernel round=$round"
	result $? "round $round, kernel ext3: cold sequential read"
	# The kernel's dirty metadata (the unlinks) goes out now, not during our round.
	sync

	# Ours: the same, with vfs_server restarted for the cold read.
	run_bench "$work/o1" --server vfs --runtime-dir "$work" --phases metadata,write --label "ours round=$round"
	result $? "round $round, ours: create/stat/unlink and sequential write"
	stop "$vfs"
	result $? "round $round, vfs_server stops on SIGTERM with exit 0 (cold read next)" || { tail -5 "$work/vfs.log"; finish; }
	vfs=0
	start_vfs
	result $? "round $round, a new vfs_server mounts namespace 1 (empty caches)" || { tail -20 "$work/vfs.log"; finish; }
	run_bench "$work/o2" --server vfs --runtime-dir "$work" --phases read,cleanup --label "ours round=$round"
	result $? "round $round, ours: cold sequential read"
done

# Both file systems unmounted, then checked.
umount "$mnt"
result $? "umount the kernel's ext3"
mounted=0
"$e2fsck" -fn "$dev" >"$work/fsck-kernel.out" 2>&1
result $? "e2fsck -fn $dev (kernel's disk): $(tail -1 "$work/fsck-kernel.out")" || cat "$work/fsck-kernel.out"
stop "$vfs"
result $? "vfs_server stops on SIGTERM with exit 0 ($(grep -o "everything unmounted cleanly" "$work/vfs.log" | tail -1))" ||
	tail -5 "$work/vfs.log"
vfs=0
"$bin/limitless-storage" read --nsid 1 --lba 0 --blocks $((bytes / 4096)) --output "$work/after.img" --runtime-dir "$work" \
	>"$work/read.out" 2>&1
result $? "namespace 1 read back" || cat "$work/read.out"
"$e2fsck" -fn "$work/after.img" >"$work/fsck-ours.out" 2>&1
result $? "e2fsck -fn on namespace 1 (our disk): $(tail -1 "$work/fsck-ours.out")" || cat "$work/fsck-ours.out"
# What the journal cost ours: each vfs_server logs its commits and journalled blocks at unmount.
grep -o "journal: [0-9]* commits, [0-9]* blocks journalled" "$work/vfs.log" | awk '{ c += $2; b += $4; n++ }
	END { printf "     our journal over %d mounts: %d commits, %d blocks journalled (%.1f blocks per commit)\n", n, c, b, c ? b / c : 0 }'
stop "$storage"
result $? "storage_server stops on SIGTERM with exit 0" || tail -5 "$work/storage.log"
storage=0

echo "==== vfs-bench table: ${files} files, ${mib} MiB file in 128 KiB calls, ext3 (data=ordered) 4 KiB blocks on two identical QEMU NVMe disks, TCG, all on guest CPU ${cpu}; median of ${rounds} alternating rounds"
awk '
	function field(line, name,   n, i, kv) {
		n = split(line, kv, " ")
		for (i = 1; i <= n; i++) if (index(kv[i], name "=") == 1) return substr(kv[i], length(name) + 2)
		return ""
	}
	function median(list,   n, a, i, j, x) { # list: space-separated numbers
		n = split(list, a, " ")
		if (n == 0) return ""
		for (i = 2; i <= n; i++) { x = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
		return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
	{ t = field($0, "target"); r = field($0, "round"); op = field($0, "op")
	  value = (op ~ /^seq/) ? field($0, "mb_per_s") : field($0, "ops_per_s")
	  v[t, op] = v[t, op] " " value; per[t, op, r] = value
	  if (op !~ /^seq/) { p50[t, op] = p50[t, op] " " field($0, "p50_us"); p99[t, op] = p99[t, op] " " field($0, "p99_us") }
	  if (r + 0 > rounds) rounds = r + 0 }
	END {
		split("create stat unlink seqwrite seqread", ops, " ")
		names["create"] = "create (open O_EXCL + close)"; names["stat"] = "stat"; names["unlink"] = "unlink"
		names["seqwrite"] = "sequential write + fsync"; names["seqread"] = "sequential read (cold)"
		printf "%-29s %-6s %25s %25s %12s %s\n", "operation", "unit", "kernel ext3 (p50/p99 us)", "ours (p50/p99 us)", "ours/kernel", "per round"
		for (i = 1; i <= 5; i++) {
			op = ops[i]; unit = (op ~ /^seq/) ? "MB/s" : "ops/s"
			k = median(v["kernel", op]); o = median(v["ours", op])
			kc = (k == "") ? "failed" : k; oc = (o == "") ? "failed" : o
			if (unit == "ops/s") {
				if (k != "") kc = sprintf("%s (%s/%s)", k, median(p50["kernel", op]), median(p99["kernel", op]))
				if (o != "") oc = sprintf("%s (%s/%s)", o, median(p50["ours", op]), median(p99["ours", op]))
			}
			ratio = (k + 0 > 0 && o != "") ? sprintf("%.2f", o / k) : "-"
			rounds_text = ""
			for (r = 1; r <= rounds; r++)
				rounds_text = rounds_text ((per["kernel", op, r] + 0 > 0 && per["ours", op, r] != "") ? sprintf(" %.2f", per["ours", op, r] / per["kernel", op, r]) : " -")
			printf "%-29s %-6s %25s %25s %12s%s\n", names[op], unit, kc, oc, ratio, rounds_text
		}
	}' "$results"
echo "==== end"
finish
