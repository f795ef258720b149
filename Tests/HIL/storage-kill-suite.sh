#!/usr/bin/env bash
# Tests/HIL/storage-kill-suite.sh: SIGKILL storage_server under the whole stack (issue 5: "SIGKILL
# the server during a stream of acknowledged writes; after restart every acknowledged block reads
# back"). An ext2 image goes onto NVMe namespace 1; limitless-supervisor runs storage_server (the
# NVMe handed over as capabilities) and vfs_server --storage on top of it; a client writes a stream
# of files through vfs_server, each put then fsync'd (limitless-fs put), while storage_server is
# SIGKILLed. The supervisor restarts it, vfs_server's storage connection reconnects and the stream
# carries on; afterwards every file whose put was acknowledged reads back exactly, through the VFS
# and (after a clean stop) from the namespace with debugfs, and e2fsck -fn finds it clean. Then
# vfs_server is SIGKILLed under the same kind of stream: its write-back log in the supervisor's
# CAP_PAGE_CACHE memory keeps the plain ext2 image consistent.
# In the rig: Scripts/rig.sh test storagekill
# On spare hardware (NVMe bound to vfio-pci): sudo bash Tests/HIL/storage-kill-suite.sh BDF
# Ends with one "N passed, N failed" line; exit 1 on failure.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
# shellcheck source=Tests/HIL/lib.sh
source Tests/HIL/lib.sh

device=${1:-0000:00:03.0}
files=${LIMITLESS_KILL_FILES:-60}  # files in the stream
kill_at=${LIMITLESS_KILL_AT:-15}   # SIGKILL storage_server once this many are acknowledged
bin=$PWD/.build/release
work=$(mktemp -d /tmp/limitless-storagekill-XXXXXX)
supervisor=0
storage=0
HIL_PIDS=(supervisor storage)
image_blocks=16384 # 1 KiB blocks: a 16 MiB file system on the 512-byte-sector namespace 1
restarts() { ctl status storage --json 2>/dev/null | sed -nE 's/.*"restarts":([0-9]+).*/\1/p'; }

require_built "$bin" limitless-supervisor serverctl storage_server vfs_server limitless-fs limitless-storage
mke2fs=$(sbin mke2fs) && e2fsck=$(sbin e2fsck) && debugfs=$(sbin debugfs)
result $? "e2fsprogs found (mke2fs, e2fsck, debugfs)" || finish

# The image goes on with a standalone storage_server, stopped before the supervisor starts.
"$mke2fs" -q -F -t ext2 -b 1024 "$work/fs.img" "$image_blocks" >"$work/mke2fs.out" 2>&1
result $? "mke2fs made a $((image_blocks / 1024)) MiB ext2 image" || { cat "$work/mke2fs.out"; finish; }
"$bin/storage_server" --device "$device" --runtime-dir "$work" >"$work/standalone.log" 2>&1 &
storage=$!
wait_socket "$work/storage.sock" 60 && storage_tool write --nsid 1 --lba 0 --input "$work/fs.img" >"$work/write.out" 2>&1 &&
	kill -TERM "$storage" && wait "$storage"
result $? "the image is on namespace 1 ($(head -1 "$work/write.out")); the standalone storage_server stopped" ||
	{ cat "$work/write.out"; tail "$work/standalone.log"; finish; }
storage=0

cat >"$work/servers.conf" <<CONF
start_server storage $bin/storage_server --runtime-dir $work
    device NVME0 $device
    capabilities CAP_PCI_CONFIG CAP_MMIO_NVME0 CAP_IRQ_NVME0 CAP_DMA_ALLOC CAP_BLOCK_READ CAP_BLOCK_WRITE
    restart on-failure backoff=100ms limit=10/60s healthy=1s

start_server vfs $bin/vfs_server --storage storage --nsid 1 --runtime-dir $work --writeback-interval 1s
    depends storage
    capabilities CAP_PAGE_CACHE CAP_INODE_CREATE CAP_BLOCK_READ CAP_BLOCK_WRITE
    restart on-failure backoff=100ms limit=10/60s
CONF
"$bin/limitless-supervisor" --config "$work/servers.conf" --check >"$work/check.out" 2>&1
result $? "servers.conf (storage_server + vfs_server --storage) checks" || { cat "$work/check.out"; finish; }

"$bin/limitless-supervisor" --config "$work/servers.conf" --runtime-dir "$work" --log-dir "$work/logs" >"$work/supervisor.log" 2>&1 &
supervisor=$!
wait_socket "$work/vfs.sock" 60 && fs mkdir /stream >"$work/out" 2>&1
result $? "the supervisor runs storage_server (pid $(server_pid storage)) and vfs_server mounted on it" || { cat "$work/out"; tail -20 "$work/supervisor.log"; finish; }
first_pid=$(server_pid storage)

# The stream: file i is 1 KiB to 192 KiB of random bytes, put (written and fsync'd) through the
# VFS. A put that fails (the outage outlasting vfs_server's reconnect deadline) is not
# acknowledged and is tried again once; only acknowledged files are checked.
# One put, bounded (vfs_server's own storage reconnect deadline is 30 s).
put() { timeout 90 "$bin/limitless-fs" put "$work/f$1" "/stream/f$1" --runtime-dir "$work" >"$work/put.out" 2>&1; }
acknowledged=()
refused=0
killed_after=-1
killer=0
for i in $(seq 1 "$files"); do
	head -c $((1024 + RANDOM * 6)) /dev/urandom >"$work/f$i"
	if ((${#acknowledged[@]} == kill_at && killed_after < 0)); then
		# Killed while this put is under way: the put goes on through the restart.
		(sleep 0.2; kill -KILL "$first_pid") &
		killer=$!
		killed_after=$i
	fi
	if put "$i" || put "$i"; then
		acknowledged+=("$i")
	else
		refused=$((refused + 1))
		echo "     put f$i not acknowledged: $(head -1 "$work/put.out")"
		tail -3 "$work"/logs/storage* "$work"/logs/vfs* 2>/dev/null | indent
	fi
	((i % 20 == 0)) && echo "     $i puts, ${#acknowledged[@]} acknowledged"
done
((killed_after > 0)) && wait "$killer"
new_pid=$(server_pid storage)
[[ $killed_after -gt 0 && -n $new_pid && $new_pid != "$first_pid" && $(restarts) == 1 ]] && ! kill -0 "$first_pid" 2>/dev/null
result $? "storage_server pid $first_pid SIGKILLed during put $killed_after; the supervisor restarted it (pid ${new_pid:-none}, restarts $(restarts))" ||
	tail -20 "$work/supervisor.log"
after=0
for i in "${acknowledged[@]}"; do ((i > killed_after)) && after=$((after + 1)); done
((${#acknowledged[@]} >= files - 2 && after > 0))
result $? "the stream carried on through the restart: ${#acknowledged[@]} of $files puts acknowledged, $after after the kill, $refused not"

# differing_through_vfs PREFIX N...: how many of the files PREFIXN differ when got back through
# the VFS from /stream (each one named on stderr).
differing_through_vfs() {
	local prefix=$1 bad=0 i
	shift
	for i in "$@"; do
		if ! fs get "/stream/$prefix$i" "$work/back" >"$work/get.out" 2>&1 || ! cmp -s "$work/$prefix$i" "$work/back"; then
			bad=$((bad + 1))
			echo "     $prefix$i differs: $(head -1 "$work/get.out")" >&2
		fi
	done
	echo "$bad"
}
bad=$(differing_through_vfs f "${acknowledged[@]}")
((bad == 0))
result $? "every acknowledged file reads back exactly through the VFS (${#acknowledged[@]} files, $bad bad)"

# Then vfs_server itself is SIGKILLed under a stream of puts (issue 6). The image is plain ext2;
# vfs_server's CAP_PAGE_CACHE memfd, which the supervisor keeps across instances, holds the
# mount's write-back log, so the next instance replays the last commit: every acknowledged put
# reads back, and e2fsck below finds the image clean.
vfs_log() { ctl logs vfs 2>&1; }
protection=$(grep -m1 -o "write-back log in supervisor-held memory.*" <<<"$(vfs_log)")
[[ -n $protection ]]
result $? "vfs_server's plain ext2 mount: ${protection:-no write-back log line}" || vfs_log | grep ext2 | tail -5
vfs_first=$(server_pid vfs)
vfs_acknowledged=()
vfs_killed_after=-1
for i in $(seq 1 40); do
	head -c $((1024 + RANDOM * 3)) /dev/urandom >"$work/g$i"
	if ((${#vfs_acknowledged[@]} == 10 && vfs_killed_after < 0)); then
		(sleep 0.1; kill -KILL "$vfs_first") &
		killer=$!
		vfs_killed_after=$i
	fi
	timeout 90 "$bin/limitless-fs" put "$work/g$i" "/stream/g$i" --runtime-dir "$work" >"$work/put.out" 2>&1 &&
		vfs_acknowledged+=("$i")
done
((vfs_killed_after > 0)) && wait "$killer"
vfs_new=$(server_pid vfs)
[[ $vfs_killed_after -gt 0 && -n $vfs_new && $vfs_new != "$vfs_first" ]] && ! kill -0 "$vfs_first" 2>/dev/null
result $? "vfs_server pid $vfs_first SIGKILLed during put g$vfs_killed_after; restarted (pid ${vfs_new:-none}); $(grep -m1 -o "write-back log: replayed.*" <<<"$(vfs_log)" || echo "no committed transaction was left to replay")" ||
	tail -20 "$work/supervisor.log"
bad=$(differing_through_vfs g "${vfs_acknowledged[@]}")
((${#vfs_acknowledged[@]} > 10 && bad == 0))
result $? "every acknowledged put reads back after vfs_server's restart (${#vfs_acknowledged[@]} of 40 acknowledged, $bad bad)"

kill -TERM "$supervisor" && wait "$supervisor"
result $? "SIGTERM: the supervisor stops both servers, exit 0" || tail -20 "$work/supervisor.log"
supervisor=0

"$bin/storage_server" --device "$device" --runtime-dir "$work" >"$work/standalone.log" 2>&1 &
storage=$!
wait_socket "$work/storage.sock" 60 &&
	storage_tool read --nsid 1 --lba 0 --blocks $((image_blocks * 2)) --output "$work/after.img" >"$work/read.out" 2>&1
result $? "namespace 1 read back" || cat "$work/read.out"
"$e2fsck" -fn "$work/after.img" >"$work/fsck.out" 2>&1
result $? "e2fsck -fn finds the file system clean" || tail -20 "$work/fsck.out"
bad=0
for i in "${acknowledged[@]}"; do
	if ! "$debugfs" -R "dump /stream/f$i $work/dumped" "$work/after.img" >/dev/null 2>&1 || ! cmp -s "$work/f$i" "$work/dumped"; then
		bad=$((bad + 1))
	fi
done
for i in "${vfs_acknowledged[@]}"; do
	if ! "$debugfs" -R "dump /stream/g$i $work/dumped" "$work/after.img" >/dev/null 2>&1 || ! cmp -s "$work/g$i" "$work/dumped"; then
		bad=$((bad + 1))
	fi
done
((bad == 0))
result $? "debugfs reads every acknowledged file from the namespace exactly, both streams ($bad bad)"
! grep -q "has_journal\|needs_recovery" <<<"$("$(sbin dumpe2fs)" -h "$work/after.img" 2>/dev/null | grep features)"
result $? "the image is still plain ext2: $("$(sbin dumpe2fs)" -h "$work/after.img" 2>/dev/null | grep features)"
finish
