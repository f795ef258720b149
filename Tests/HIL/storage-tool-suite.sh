#!/usr/bin/env bash
# Tests/HIL/storage-tool-suite.sh: limitless-storage (the block client tool) against storage_server
# on a real (or emulated) NVMe controller. In the rig: Scripts/rig.sh test storagetool
# On spare hardware (bound to vfio-pci): sudo bash Tests/HIL/storage-tool-suite.sh BDF
# Starts storage_server standalone in a temporary runtime directory, then: info lists both
# namespaces, a random file written and read back is byte-identical, a write past the end is
# refused, and bench prints figures (data inline, and zero copy through a registered buffer). Ends with one "N passed, N failed" line; exit 1 on failure.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2

device=${1:-0000:00:03.0}
bin=.build/release
work=$(mktemp -d /tmp/limitless-storagetool-XXXXXX)
passed=0
failed=0
server=0
result() { if (($1 == 0)); then passed=$((passed + 1)); echo "PASS $2"; else failed=$((failed + 1)); echo "FAIL $2"; fi; }
finish() {
	((server > 0)) && kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null
	rm -rf "$work"
	echo "$passed passed, $failed failed"
	((failed == 0))
	exit
}
tool() { "$bin/limitless-storage" "$@" --runtime-dir "$work"; }

for program in storage_server limitless-storage; do
	[[ -x $bin/$program ]] || { result 1 "$bin/$program not found: run swift build -c release first"; finish; }
done

"$bin/storage_server" --device "$device" --runtime-dir "$work" >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 300); do [[ -S $work/storage.sock ]] && break; sleep 0.1; done
[[ -S $work/storage.sock ]]
result $? "storage_server on $device answers at $work/storage.sock" || { tail -20 "$work/server.log"; finish; }

info=$(tool info 2>&1)
grep -qE "^1 +512 " <<<"$info" && grep -qE "^2 +4096 " <<<"$info"
result $? "info lists nsid 1 (512 B) and nsid 2 (4096 B)"
while IFS= read -r line; do echo "     $line"; done <<<"$info"

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
	grep -E "IOPS|latency p50|latency p99" "$work/bench.out" | sed 's/^/     /'
done

kill -TERM "$server"
wait "$server"
result $? "storage_server stops on SIGTERM with exit 0"
server=0
finish
