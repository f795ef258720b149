#!/bin/bash
# Limitless rig, inside the guest (as root, at boot): serve the binaries named in
# RIG_RAM_BINARIES, and every shared library they load, from guest memory rather than from the
# host's root over 9p. Needs RIG_REPO, RIG_RAM_BINARIES (from "$RIG_ENV").
#
# Why: on the 9p root every file a process has mapped costs a 9p round trip (the fid's clunk)
# when the process exits, about 0.2 ms each under TCG and one after another before its parent
# (the supervisor) hears of the exit. storage_server maps 20 files (itself and 19 libraries):
# 3-4 ms of every crash-to-serving restart went to the rig's file system, which a machine with
# its binaries on a local disk never pays. Each file is copied into /run (a tmpfs) and
# bind-mounted over its own path, so every path the suites use stays the same.
set -u
# shellcheck source=/dev/null
[[ -n ${RIG_ENV:-} && -r $RIG_ENV ]] && . "$RIG_ENV"
[[ -n ${RIG_RAM_BINARIES:-} ]] || exit 0
store=/run/limitless-rig/ram
mkdir -p "$store" || exit 1

declare -A seen=()
files=()
for name in $RIG_RAM_BINARIES; do
	binary=$(readlink -f "$RIG_REPO/.build/release/$name") || continue
	[[ -f $binary ]] || { echo "rig: RIG_RAM_BINARIES: $RIG_REPO/.build/release/$name is not built; left on 9p"; continue; }
	files+=("$binary")
	# The dynamic loader's own list: "name => /path (address)" or "/path (address)".
	while read -r first arrow path _; do
		[[ $arrow == "=>" ]] || path=$first
		[[ $path == /* ]] && files+=("$(readlink -f "$path")")
	done < <(ldd "$binary" 2>/dev/null)
done

count=0 bytes=0
for file in "${files[@]}"; do
	[[ -z ${seen[$file]:-} ]] || continue
	seen[$file]=1
	copy="$store/$count"
	if cp "$file" "$copy" && mount --bind "$copy" "$file"; then
		count=$((count + 1))
		bytes=$((bytes + $(stat -c %s "$copy")))
	else
		echo "rig: could not serve $file from memory; left on 9p"
		rm -f "$copy"
	fi
done
echo "rig: $count binaries and libraries served from guest memory ($((bytes >> 20)) MiB; RIG_RAM_BINARIES)"
