#!/usr/bin/env bash
# Tests/HIL/storage-tool-suite.sh: limitless-storage (the block client tool) against storage_server
# on a real (or emulated) NVMe controller. In the rig: Scripts/rig.sh test storagetool
# On spare hardware (bound to vfio-pci): sudo bash Tests/HIL/storage-tool-suite.sh BDF
# Starts storage_server standalone in a temporary runtime directory, then: info lists both
# namespaces, a random file written and read back is byte-identical, a write past the end is
# refused, and bench prints figures (data inline, and zero copy through a registered buffer). Ends with one "N passed, N failed" line; exit 1 on failure.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
# shellcheck source=Tests/HIL/lib.sh
source Tests/HIL/lib.sh

device=${1:-0000:00:03.0}
bin=.build/release
work=$(mktemp -d /tmp/limitless-storagetool-XXXXXX)
server=0
HIL_PIDS=(server)
tool() { "$bin/limitless-storage" "$@" --runtime-dir "$work"; }

require_built "$bin" storage_server limitless-storage

"$bin/storage_server" --device "$device" --runtime-dir "$work" >"$work/server.log" 2>&1 &
server=$!
wait_socket "$work/storage.sock"
result $? "storage_server on $device answers at $work/storage.sock" || { tail -20 "$work/server.log"; finish; }

info=$(tool info 2>&1)
grep -qE "^1 +512 " <<<"$info" && grep -qE "^2 +4096 " <<<"$info"
result $? "info lists nsid 1 (512 B) and nsid 2 (4096 B)"
indent <<<"$info"

head -c $((3 * 1024 * 1024 + 4096 * 3)) /dev/urandom >"$work/random.bin"
tool write --nsid 2 --lba 100 --input "$work/random.bin" >"$work/write.out" 2>&1 &&
	tool read --nsid 2 --lba 100 --blocks $(((3 * 1024 * 1024 + 4096 * 3) / 4096)) --output "$work/back.bin" >"$work/read.out" 2>&1 &&
	cmp -s "$work/random.bin" "$work/back.bin"
result $? "a 3 MiB random file written to nsid 2 and read back is identical ($(head -1 "$work/write.out"))"

blocks=$(grep -E "^1 " <<<"$info" | awk '{print $3}')
if tool write --nsid 1 --lba $((blocks - 1)) --pattern 3 --blocks 2 >"$work/past.out" 2>&1; then
	result 1 "a write past the end of nsid 1 was accepted"
else
	grep -q "past the end" "$work/past.out"
	result $? "a write past the end of nsid 1 is refused: $(head -1 "$work/past.out")"
fi

for run in "1 inline" "8 inline" "8 zero-copy"; do
	read -r depth path <<<"$run"
	tool bench --nsid 2 --seconds 1 --queue-depth "$depth" --"$path" >"$work/bench.out" 2>&1
	status=$?
	grep -q "IOPS" "$work/bench.out"
	result $((status || $?)) "bench, 4 KiB random reads at queue depth $depth, data $path (emulated device under TCG: figures only)"
	grep -E "IOPS|latency p50|latency p99" "$work/bench.out" | indent
done

kill -TERM "$server"
wait "$server"
result $? "storage_server stops on SIGTERM with exit 0"
server=0
finish
