#!/usr/bin/env bash
# Tests/HIL/vfs-suite.sh: the whole storage stack. An ext3 image (ext2 with a journal) made by
# mke2fs is written onto NVMe namespace 1 with limitless-storage; storage_server serves the NVMe,
# vfs_server mounts the namespace through it (--storage), limitless-fs works on files; vfs_server
# is killed (SIGKILL) under a stream of fsync'd writes and started again (it replays its journal),
# every acknowledged file must read back; then vfs_server stops cleanly, the namespace is read
# back and e2fsck -fn must find it clean, and debugfs must read a file written through the VFS.
# In the rig: Scripts/rig.sh test vfs
# Then the same under limitless-supervisor, vfs_server as uid 65534 admitted by its CAP_BLOCK_*
# tokens, across a SIGKILL of storage_server.
# On spare hardware (NVMe bound to vfio-pci): sudo bash Tests/HIL/vfs-suite.sh BDF
# Ends with one "N passed, N failed" line; exit 1 on failure.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
# shellcheck source=Tests/HIL/lib.sh
source Tests/HIL/lib.sh

device=${1:-0000:00:03.0}
bin=.build/release
work=$(mktemp -d /tmp/limitless-vfs-XXXXXX)
storage=0
vfs=0
supervisor=0
HIL_PIDS=(vfs storage supervisor)
image_blocks=16384 # 1 KiB blocks: a 16 MiB file system on the 512-byte-sector namespace 1

require_built "$bin" storage_server vfs_server limitless-fs limitless-storage limitless-supervisor serverctl
mke2fs=$(sbin mke2fs) && e2fsck=$(sbin e2fsck) && debugfs=$(sbin debugfs)
result $? "e2fsprogs found (mke2fs, e2fsck, debugfs)" || finish

"$mke2fs" -q -F -t ext3 -b 1024 "$work/fs.img" "$image_blocks" >"$work/mke2fs.out" 2>&1
result $? "mke2fs made a $((image_blocks / 1024)) MiB ext3 image (ext2 with a journal)" || { cat "$work/mke2fs.out"; finish; }

"$bin/storage_server" --device "$device" --runtime-dir "$work" >"$work/storage.log" 2>&1 &
storage=$!
wait_socket "$work/storage.sock"
result $? "storage_server on $device answers at $work/storage.sock" || { tail -20 "$work/storage.log"; finish; }

storage_tool write --nsid 1 --lba 0 --input "$work/fs.img" >"$work/write.out" 2>&1
result $? "the image is on namespace 1 ($(head -1 "$work/write.out"))" || { cat "$work/write.out"; finish; }

"$bin/vfs_server" --storage storage --nsid 1 --runtime-dir "$work" --writeback-interval 1s >"$work/vfs.log" 2>&1 &
vfs=$!
wait_socket "$work/vfs.sock"
result $? "vfs_server mounts namespace 1 through storage_server" || { tail -20 "$work/vfs.log"; finish; }
grep -q "mounted ext3 at /" "$work/vfs.log"
result $? "vfs_server logs the mount: $(grep -m1 "mounted" "$work/vfs.log")"

fs mkdir -p /data/deep/er >"$work/out" 2>&1
result $? "mkdir -p /data/deep/er" || cat "$work/out"
head -c $((3 * 1024 * 1024 + 777)) /dev/urandom >"$work/random.bin"
fs put "$work/random.bin" /data/deep/random.bin >"$work/out" 2>&1 &&
	fs get /data/deep/random.bin "$work/back.bin" >>"$work/out" 2>&1 &&
	cmp -s "$work/random.bin" "$work/back.bin"
result $? "a 3 MiB random file put and got back is identical" || cat "$work/out"
echo "written through the VFS" >"$work/note.txt"
fs put "$work/note.txt" /data/note.txt >"$work/out" 2>&1
result $? "put /data/note.txt" || cat "$work/out"

listing=$(fs ls -l /data/deep 2>&1)
grep -q "3146505 .* random.bin" <<<"$listing" && grep -q "^d.* er$" <<<"$listing"
result $? "ls -l shows the file's size and the directory"
indent <<<"$listing"

fs mv /data/deep/random.bin /data/moved.bin >"$work/out" 2>&1 &&
	[[ $(fs ls /data 2>&1) == $'deep\nmoved.bin\nnote.txt' ]]
result $? "mv renames across directories" || { cat "$work/out"; fs ls /data; }

message=$(fs rm /data/missing 2>&1)
status=$?
[[ $status == 1 && $message == "limitless-fs: cannot remove '/data/missing': No such file or directory" ]]
result $? "rm of a missing file fails like coreutils: $message"
fs rm /data/moved.bin >"$work/out" 2>&1 && fs rmdir /data/deep/er >>"$work/out" 2>&1
result $? "rm and rmdir" || cat "$work/out"

df=$(fs df / 2>&1)
grep -qE "^ext3 +16[0-9]{3} " <<<"$df"
result $? "df reports the 16 MiB file system as ext3 (it has a journal)"
indent <<<"$df"

# A crash under load: files put (each fsync'd) in a loop, vfs_server killed in the middle, then
# started again; it replays what its journal committed, and every put that returned reads back.
: >"$work/acked"
(for i in $(seq 1 400); do fs put "$work/note.txt" "/data/crash$i" >/dev/null 2>&1 && echo "$i" >>"$work/acked"; done) &
writer=$!
# shellcheck disable=SC2317 # called through wait_until
acknowledged_at_least() { (($(wc -l <"$work/acked") >= $1)); }
wait_until 60 acknowledged_at_least 5
kill -KILL "$vfs"
wait "$vfs" 2>/dev/null
kill -TERM "$writer" 2>/dev/null
wait "$writer" 2>/dev/null
acked=$(wc -l <"$work/acked")
((acked >= 5))
result $? "vfs_server killed (SIGKILL) after $acked acknowledged puts"
"$bin/vfs_server" --storage storage --nsid 1 --runtime-dir "$work" --writeback-interval 1s >>"$work/vfs.log" 2>&1 &
vfs=$!
# shellcheck disable=SC2317 # called through wait_until
mounts_logged() { (($(grep -c "mounted ext3 at /" "$work/vfs.log") >= $1)); }
wait_until 30 mounts_logged 2
wait_socket "$work/vfs.sock" && fs ls /data >/dev/null 2>&1
result $? "vfs_server started again ($(grep -m1 -o "journal: replayed.*" "$work/vfs.log" || echo "nothing committed was left to replay"))" ||
	{ tail -20 "$work/vfs.log"; finish; }
lost=0
while read -r i; do [[ $(fs cat "/data/crash$i" 2>/dev/null) == "written through the VFS" ]] || lost=$((lost + 1)); done <"$work/acked"
((lost == 0))
result $? "all $acked acknowledged files read back after the restart ($lost lost)"

kill -TERM "$vfs"
wait "$vfs"
result $? "vfs_server stops on SIGTERM with exit 0 ($(grep -o "everything unmounted cleanly" "$work/vfs.log"))"
vfs=0
# The page cache's pages are registered with storage_server: the controller DMAs into them, and
# every page request was answered zero copy (the store's own count, logged at unmount).
grep -q "page cache pool: .* registered with the storage server (zero copy)" "$work/vfs.log" &&
	counts=$(grep -o "[0-9]* page requests ([0-9]* zero copy)" "$work/vfs.log" | tail -1) &&
	[[ $counts =~ ^([0-9]+)\ page\ requests\ \(([0-9]+)\ zero ]] &&
	((BASH_REMATCH[1] > 0 && BASH_REMATCH[1] == BASH_REMATCH[2]))
result $? "page cache I/O went device-to-page-cache, zero copy (${counts:-no counts logged})" ||
	grep "page" "$work/vfs.log" | tail -3

storage_tool read --nsid 1 --lba 0 --blocks $((image_blocks * 2)) --output "$work/after.img" >"$work/read.out" 2>&1
result $? "namespace 1 read back" || cat "$work/read.out"
"$e2fsck" -fn "$work/after.img" >"$work/fsck.out" 2>&1
result $? "e2fsck -fn finds the file system clean after the kill, the replay and a clean stop" || cat "$work/fsck.out"
[[ $("$debugfs" -R "cat /data/note.txt" "$work/after.img" 2>/dev/null) == "written through the VFS" ]]
result $? "debugfs reads /data/note.txt as written through the VFS"

kill -TERM "$storage"
wait "$storage"
result $? "storage_server stops on SIGTERM with exit 0"
storage=0

# The same stack under limitless-supervisor, with vfs_server running as uid 65534: storage_server
# admits a client without a token as root only, so vfs_server gets in only by presenting the
# CAP_BLOCK_READ / CAP_BLOCK_WRITE tokens the supervisor gave it (and told storage_server about).
# Then storage_server is killed: its next instance gets the tokens again from the supervisor
# and vfs_server, reconnecting, presents them again.
chmod 0777 "$work"
cat >"$work/servers.conf" <<CONF
start_server storage $PWD/$bin/storage_server --runtime-dir $work
    device NVME0 $device
    capabilities CAP_PCI_CONFIG CAP_MMIO_NVME0 CAP_IRQ_NVME0 CAP_DMA_ALLOC CAP_BLOCK_READ CAP_BLOCK_WRITE
    restart on-failure backoff=100ms
start_server vfs $PWD/$bin/vfs_server --storage storage --nsid 1 --runtime-dir $work --writeback-interval 1s
    depends storage
    capabilities CAP_BLOCK_READ CAP_BLOCK_WRITE
    user 65534
    group 65534
    restart on-failure backoff=100ms
CONF
# umask 0: the servers' sockets are open to every uid (the rig has no limitless group); the
# tokens, not the file mode, decide who may use the device.
(umask 0 && exec "$bin/limitless-supervisor" --config "$work/servers.conf" --runtime-dir "$work" --log-dir "$work/logs") \
	>"$work/supervisor.log" 2>&1 &
supervisor=$!
wait_socket "$work/vfs.sock" && sleep 1 && fs ls / >"$work/out" 2>&1
result $? "supervised: vfs_server (uid 65534) mounts namespace 1 through storage_server" ||
	{ cat "$work/out"; ctl logs storage | tail -20; ctl logs vfs | tail -20; }
storage_log() { ctl logs storage 2>&1; }
vfs_uid=$(awk '/^Uid:/ { print $2 }' "/proc/$(server_pid vfs)/status" 2>/dev/null)
[[ $vfs_uid == 65534 ]]
result $? "supervised: vfs_server runs as uid ${vfs_uid:-unknown}, which storage_server admits by token only"
# Line numbers in storage's log: both tokens arrive before the socket listens.
told() { grep -n -m1 "vfs holds $1 (token)" <<<"$(storage_log)" | cut -d: -f1; }
listening=$(grep -n -m1 "listening on" <<<"$(storage_log)" | cut -d: -f1)
read_at=$(told CAP_BLOCK_READ)
write_at=$(told CAP_BLOCK_WRITE)
[[ -n $read_at && -n $write_at && -n $listening ]] && ((read_at < listening && write_at < listening))
result $? "supervised: storage_server was told vfs's two tokens before listening (log lines $read_at, $write_at < $listening)" ||
	storage_log | head -20
grep -q "presented vfs's CAP_BLOCK_WRITE token; it now has CAP_BLOCK_READ+CAP_BLOCK_WRITE" <<<"$(storage_log)"
result $? "supervised: vfs_server presented its tokens: $(grep -m1 -o "presented vfs's CAP_BLOCK_WRITE.*" <<<"$(storage_log)")"
grep -q "privileges dropped: no_new_privs, seccomp filter" <<<"$(storage_log)"
result $? "supervised: storage_server serves under its seccomp filter ($(grep -m1 -o "seccomp filter of [0-9]* instructions" <<<"$(storage_log)"))"
echo "through the capability path" >"$work/cap.txt"
fs put "$work/cap.txt" /data/cap.txt >"$work/out" 2>&1 && fs get /data/cap.txt "$work/cap.back" >>"$work/out" 2>&1 &&
	cmp -s "$work/cap.txt" "$work/cap.back"
result $? "supervised: a file put through vfs_server reads back" || cat "$work/out"

old_pid=$(server_pid storage)
[[ -n $old_pid ]] && kill -KILL "$old_pid"
# shellcheck disable=SC2317 # called through wait_until
storage_restarted() {
	new_pid=$(server_pid storage)
	[[ -n $new_pid && $new_pid != "$old_pid" ]] && grep -q '"registered":true' <<<"$(ctl status storage --json 2>/dev/null)"
}
wait_until 30 storage_restarted
[[ -n $old_pid && -n ${new_pid:-} && $new_pid != "$old_pid" ]]
result $? "supervised: storage_server SIGKILLed (pid $old_pid) and restarted (pid ${new_pid:-none})"
echo "after the restart" >"$work/cap2.txt"
fs put "$work/cap2.txt" /data/cap2.txt >"$work/out" 2>&1 && fs get /data/cap.txt "$work/cap.back2" >>"$work/out" 2>&1 &&
	cmp -s "$work/cap.txt" "$work/cap.back2"
result $? "supervised: vfs_server carries on after the restart" || { cat "$work/out"; ctl logs vfs | tail -20; }
(($(grep -c "presented vfs's CAP_BLOCK_WRITE token" <<<"$(storage_log)") >= 2))
result $? "supervised: the restarted storage_server got the tokens again and vfs_server presented them again"
! grep -q "refused MSG_BLOCK" <<<"$(storage_log)"
result $? "supervised: storage_server refused no block request"

# Revoking CAP_BLOCK_WRITE: the supervisor tells storage_server to forget that token, and the
# next write from vfs_server's connection (which presented it) is refused; reads go on.
ctl revoke vfs CAP_BLOCK_WRITE >"$work/out" 2>&1
result $? "supervised: serverctl revoke vfs CAP_BLOCK_WRITE" || cat "$work/out"
echo "after the revoke" >"$work/cap3.txt"
! fs put "$work/cap3.txt" /data/cap3.txt >"$work/out" 2>&1
result $? "supervised: after the revoke a write through vfs_server fails ($(head -1 "$work/out"))"
refusal=$(grep -m1 -o "refused MSG_BLOCK_WRITE.*" <<<"$(storage_log)")
grep -q "lacks CAP_BLOCK_WRITE (it presented tokens for CAP_BLOCK_READ)" <<<"$refusal"
result $? "supervised: storage_server refused it: ${refusal:-no refusal logged}"
grep -q "vfs's block token withdrawn" <<<"$(storage_log)"
result $? "supervised: storage_server was told the token is withdrawn"

# Granting it back at run time: vfs_server presents the new token on its live connection before
# its next block request (neither server restarts), and writes work again.
vfs_pid=$(server_pid vfs)
vfs_log() { ctl logs vfs 2>&1; }
ctl grant vfs CAP_BLOCK_WRITE >"$work/out" 2>&1
result $? "supervised: serverctl grant vfs CAP_BLOCK_WRITE" || cat "$work/out"
echo "after the grant" >"$work/cap4.txt"
fs put "$work/cap4.txt" /data/cap4.txt >"$work/out" 2>&1 && fs get /data/cap4.txt "$work/cap4.back" >>"$work/out" 2>&1 &&
	cmp -s "$work/cap4.txt" "$work/cap4.back"
result $? "supervised: after the grant a write through vfs_server works again" || { cat "$work/out"; vfs_log | tail -20; }
presented=$(grep -m1 -o "presented the [0-9]* CAP_BLOCK tokens held since a run-time grant.*" <<<"$(vfs_log)")
[[ -n $vfs_pid && $(server_pid vfs) == "$vfs_pid" && $presented == *CAP_BLOCK_WRITE* ]]
result $? "supervised: the same vfs_server (pid $vfs_pid) ${presented:-presented nothing}" || vfs_log | tail -20
kill -TERM "$supervisor"
wait "$supervisor"
result $? "supervised: limitless-supervisor stops with exit 0"
supervisor=0
finish
