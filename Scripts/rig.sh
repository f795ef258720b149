#!/usr/bin/env bash
# Limitless hardware-in-the-loop rig: boots an emulated q35 machine (QEMU, emulated intel-iommu)
# whose root is the host's root (read-only 9p), binds the profile's PCI devices to vfio-pci and
# runs the project's binaries against them. See `Scripts/rig.sh --help` and Hardware/README.md.
# RIG_* variables reach the guest through `compgen -v RIG_` (SC2034); QEMU arguments have commas
# (SC2054).
# shellcheck disable=SC2034,SC2054
set -uo pipefail
shopt -s extglob

usage() {
	cat <<'EOF'
Usage: Scripts/rig.sh [OPTIONS] [MODE] [ARGS...]

Modes:
  up                 (default) boot, bind the devices, run the profile's RIG_MAIN_JOB, power off
  test [SUITE...]    run hardware-in-the-loop suites in one boot (default: the profile's
                     RIG_SUITES); closes with "N passed, N failed"; exit 1 on any failure
  run -- CMD ARGS... run one command in the guest (cwd = repo root); exits with its exit code
  shell              interactive bash on the guest's serial console (Ctrl-A x quits QEMU,
                     Ctrl-A c toggles the QEMU monitor; `exit` powers the guest off)
  qmp COMMAND [K=V...]  send a QMP command to the running rig (works on the host and inside the
                     guest), e.g.  qmp device_del id=nvme0   qmp keys a shift-b ret
                     qmp hmp 'info pci'   qmp system_powerdown
  prepare            install what is missing, fetch the guest kernel, build the initramfs; no boot

Options:
  --profile NAME|PATH  machine profile (default Hardware/rig-default.conf; NAME finds
                       Hardware/rig-NAME.conf or Hardware/NAME.conf)
  --accel tcg|kvm      accelerator (default: the profile's RIG_ACCEL, tcg)
  --timeout SECONDS    whole-run guard (default 600; shell mode: none unless given)
  -v, --verbose        show the whole guest console on stderr
  -h, --help           this text

Environment: any exported RIG_* variable overrides the profile's (RIG_ACCEL, RIG_TIMEOUT,
RIG_SUITES, RIG_SUITE_<name>, RIG_EXTRA_MODULES, ...); RIG_PROFILE picks the profile.
RIG_TRACE="sched:sched_switch sched:sched_wakeup ..." records those kernel trace events in the
guest during each suite (test mode) into .build-rig/trace-SUITE.txt.
Files: .build-rig/console.log (guest console of the last run), .build-rig/dmesg.log,
.build-rig/devices, .build-rig/qmp.sock, .build-rig/build.log (up and test build the release
binaries first; RIG_BUILD=0 skips that). Exit codes: the job's (up, run), 1 a suite failed
(test), 2 usage, 3 set-up failed, 4 the guest died without reporting, 124 timed out.
EOF
}

say() { echo "rig: $*" >&2; }
die() {
	local code=$1
	shift
	say "error: $*"
	exit "$code"
}

# Single-quote a string for sh/bash.
shq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# ---------------------------------------------------------------------------------------------
# Paths and options

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P) || exit 3
rig_dir="$repo/Scripts/rig"
state=${RIG_STATE_DIR:-$repo/.build-rig}
[[ $state == /* ]] || state="$PWD/$state"
started=$SECONDS

opt_profile=${RIG_PROFILE:-}
opt_accel=""
opt_timeout=""
verbose=${RIG_VERBOSE:-0}
while (($#)); do
	case $1 in
	--profile) opt_profile=${2:?--profile needs a value}; shift 2 ;;
	--profile=*) opt_profile=${1#*=}; shift ;;
	--accel) opt_accel=${2:?--accel needs a value}; shift 2 ;;
	--accel=*) opt_accel=${1#*=}; shift ;;
	--timeout) opt_timeout=${2:?--timeout needs a value}; shift 2 ;;
	--timeout=*) opt_timeout=${1#*=}; shift ;;
	-v | --verbose) verbose=1; shift ;;
	-h | --help) usage; exit 0 ;;
	--) shift; break ;;
	-*) usage >&2; die 2 "unknown option $1" ;;
	*) break ;;
	esac
done
mode=${1:-up}
(($#)) && shift
case $mode in
up | test | shell | prepare) ;;
run)
	[[ ${1:-} == -- ]] && shift
	(($#)) || die 2 "run needs a command: Scripts/rig.sh run -- CMD ARGS..."
	;;
qmp)
	(($#)) || die 2 "qmp needs a command, e.g. Scripts/rig.sh qmp query-status"
	;;
help) usage; exit 0 ;;
*) usage >&2; die 2 "unknown mode '$mode'" ;;
esac
if [[ -n $opt_timeout && ! $opt_timeout =~ ^[0-9]+$ ]]; then
	die 2 "--timeout wants whole seconds, got '$opt_timeout'"
fi

# --- qmp mode: no boot, no lock ---------------------------------------------------------------
if [[ $mode == qmp ]]; then
	if [[ ${RIG_IN_GUEST:-} == 1 ]]; then
		exec python3 "$rig_dir/qmp.py" --via "${RIG_RUN_DIR:?RIG_RUN_DIR not set}/qmp" "$@"
	fi
	sock="$state/qmp.sock"
	[[ -r $state/qmp.path ]] && sock=$(<"$state/qmp.path")
	[[ -S $sock ]] || die 4 "no rig is running (no QMP socket $sock)"
	exec python3 "$rig_dir/qmp.py" --socket "$sock" "$@"
fi
[[ ${RIG_IN_GUEST:-} == 1 ]] && die 2 "already inside the rig guest"

# ---------------------------------------------------------------------------------------------
# Profile: profile file, then the suites file, then exported RIG_* variables, then options.

declare -A env_overrides=()
for v in $(compgen -e); do
	[[ $v == RIG_* ]] && env_overrides[$v]=${!v}
done

case $opt_profile in
"") profile="$repo/Hardware/rig-default.conf" ;;
*/* | *.conf) profile=$opt_profile ;;
*)
	profile="$repo/Hardware/rig-$opt_profile.conf"
	[[ -f $profile ]] || profile="$repo/Hardware/$opt_profile.conf"
	;;
esac
if [[ ! -f $profile ]]; then
	die 2 "profile '${opt_profile:-default}' not found (have: $(cd "$repo/Hardware" 2>/dev/null && echo ./*.conf))"
fi
profile=$(cd "$(dirname "$profile")" && pwd -P)/$(basename "$profile")

RIG_REPO=$repo
RIG_IMAGE_DIR="$state/images"
RIG_QEMU_DEVICES=()
RIG_QEMU_EXTRA=()
# shellcheck source=/dev/null
. "$profile" || die 2 "profile $profile failed to load"
suites_file=${env_overrides[RIG_SUITES_FILE]-${RIG_SUITES_FILE:-}}
if [[ -n $suites_file ]]; then
	[[ $suites_file == /* ]] || suites_file="$repo/$suites_file"
	if [[ -f $suites_file ]]; then
		# shellcheck source=/dev/null
		. "$suites_file" || die 2 "suites file $suites_file failed to load"
	fi
fi
for v in "${!env_overrides[@]}"; do
	printf -v "$v" '%s' "${env_overrides[$v]}"
done
RIG_PROFILE=$profile
RIG_REPO=$repo
RIG_ACCEL=${opt_accel:-${RIG_ACCEL:-tcg}}
if [[ -n $opt_timeout ]]; then
	RIG_TIMEOUT=$opt_timeout
elif [[ $mode == shell && -z ${env_overrides[RIG_TIMEOUT]+x} ]]; then
	RIG_TIMEOUT=0
else
	RIG_TIMEOUT=${RIG_TIMEOUT:-600}
fi
[[ $RIG_TIMEOUT =~ ^[0-9]+$ ]] || die 2 "RIG_TIMEOUT wants whole seconds, got '$RIG_TIMEOUT'"
: "${RIG_CPU:=max}" "${RIG_MEMORY:=1024}" "${RIG_CPUS:=2}" "${RIG_MACHINE:=q35,kernel-irqchip=split}"
: "${RIG_IOMMU:=intel-iommu,intremap=on,caching-mode=on,aw-bits=48}"
: "${RIG_HUGEPAGES:=0}" "${RIG_BIND_IDS:=}" "${RIG_EXTRA_MODULES:=}" "${RIG_IMAGES:=}"
: "${RIG_HOST_PACKAGES:=}"
: "${RIG_RAM_BINARIES:=}" "${RIG_TRACE:=}"
: "${RIG_KEEP_IMAGES:=0}" "${RIG_SUITE_TIMEOUT:=0}" "${RIG_KERNEL_APPEND:=}" "${RIG_SUITES:=}"
: "${RIG_MAIN_JOB:=ls -l /dev/vfio; lspci -nnk}" "${RIG_KERNEL_BOOT:=pvh}" "${RIG_9P_CACHE:=loose}"
case $RIG_ACCEL in
tcg | kvm) ;;
*) die 2 "accelerator must be tcg or kvm, got '$RIG_ACCEL'" ;;
esac
case $RIG_KERNEL_BOOT in
pvh | bzimage) ;;
*) die 2 "RIG_KERNEL_BOOT must be pvh or bzimage, got '$RIG_KERNEL_BOOT'" ;;
esac

remaining() { # seconds left of the whole-run guard (0 = no guard)
	((RIG_TIMEOUT == 0)) && { echo 0; return; }
	local left=$((RIG_TIMEOUT - (SECONDS - started)))
	((left > 0)) || die 124 "timed out after ${RIG_TIMEOUT} s (whole-run guard, --timeout) before the guest ran"
	echo "$left"
}

mkdir -p "$state" || die 3 "cannot create $state"
exec 9>>"$state/rig.lock"
if ! flock -n 9; then
	say "waiting for another rig run ($(cat "$state/rig.owner" 2>/dev/null || echo "?")) to end; lock $state/rig.lock"
	if ((RIG_TIMEOUT)); then
		flock -w "$RIG_TIMEOUT" 9 || die 124 "still locked after $RIG_TIMEOUT s; gave up"
	else
		flock 9
	fi
	started=$SECONDS # the guard counts from here: waiting for someone else's run is not ours
fi
echo "pid $$, $mode, since $(date +%T)" >"$state/rig.owner"

# ---------------------------------------------------------------------------------------------
# Host tools (installed with apt when missing)

as_root() {
	if ((EUID == 0)); then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
		die 3 "need root to run: $*"
	fi
}

PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
qemu_bin=${RIG_QEMU:-qemu-system-x86_64}

ensure_tools() {
	local need=()
	command -v "$qemu_bin" >/dev/null || need+=(qemu-system-x86)
	if [[ ! -x /bin/busybox ]] ||
		! dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
		need+=(busybox-static)
	fi
	command -v cpio >/dev/null || need+=(cpio)
	command -v depmod >/dev/null && command -v modprobe >/dev/null || need+=(kmod)
	command -v lspci >/dev/null || need+=(pciutils)
	python3 -c 'import json, socket' 2>/dev/null || need+=(python3)
	# What the release build links (the rig builds before it boots) and what the suites run in
	# the guest from the host's root (e2fsprogs for the vfs suite).
	local package
	for package in libpci-dev libnuma-dev pkg-config libfuse3-dev fuse3 e2fsprogs; do
		dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || need+=("$package")
	done
	# The profile's own host tools (they run in the guest through the 9p root), COMMAND:PACKAGE.
	local entry
	for entry in $RIG_HOST_PACKAGES; do
		command -v "${entry%%:*}" >/dev/null || need+=("${entry#*:}")
	done
	((${#need[@]})) || return 0
	say "installing ${need[*]} (apt-get)"
	local log="$state/apt.log"
	export DEBIAN_FRONTEND=noninteractive
	{ as_root apt-get update && as_root apt-get install -y --no-install-recommends "${need[@]}"; } \
		>"$log" 2>&1 || {
		tail -n 20 "$log" >&2
		die 3 "apt-get install ${need[*]} failed (log: $log)"
	}
	hash -r
}

# ---------------------------------------------------------------------------------------------
# Guest kernel: the versioned linux-image package, extracted with dpkg -x into .build-rig/kernel/

kernel_cache="$repo/.build-rig/kernel" # shared by all state directories

kernel_package() {
	if [[ -n ${RIG_KERNEL_PACKAGE:-} ]]; then
		echo "$RIG_KERNEL_PACKAGE"
		return
	fi
	local pkg
	pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
	if [[ -z $pkg ]]; then
		# No apt lists: use the cached kernel if there is one, else update the lists once.
		local d
		for d in "$kernel_cache"/linux-image-*/.rig-complete; do
			[[ -f $d ]] && { d=${d%/.rig-complete}; pkg=${d##*/}; }
		done
		if [[ -z $pkg ]]; then
			say "looking up the guest kernel package (apt-get update)"
			as_root apt-get update >"$state/apt.log" 2>&1 || die 3 "apt-get update failed (log: $state/apt.log)"
			pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
				awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
		fi
	fi
	[[ -n $pkg ]] || die 3 "cannot find the kernel package linux-image-amd64 depends on (apt-cache depends linux-image-amd64)"
	echo "$pkg"
}

ensure_kernel() { # sets kdir kver vmlinuz
	local pkg
	pkg=$(kernel_package) || exit
	kdir="$kernel_cache/$pkg"
	mkdir -p "$kernel_cache" || die 3 "cannot create $kernel_cache"
	exec 8>"$kernel_cache/.lock"
	flock 8
	if [[ ! -f $kdir/.rig-complete ]]; then
		say "fetching guest kernel $pkg"
		local tmp="$kernel_cache/.tmp.$$"
		rm -rf "$tmp" "$kdir"
		mkdir -p "$tmp/x" || die 3 "cannot create $tmp"
		(cd "$tmp" && apt-get -q -o APT::Sandbox::User=root download "$pkg") >"$state/apt.log" 2>&1 || {
			tail -n 5 "$state/apt.log" >&2
			rm -rf "$tmp"
			die 3 "apt-get download $pkg failed (log: $state/apt.log; try apt-get update)"
		}
		say "unpacking $pkg"
		dpkg -x "$tmp"/*.deb "$tmp/x" || { rm -rf "$tmp"; die 3 "dpkg -x failed for $pkg"; }
		local v
		v=$(ls "$tmp/x/lib/modules")
		depmod -b "$tmp/x" "$v" || { rm -rf "$tmp"; die 3 "depmod failed for $v"; }
		if ! mv "$tmp/x" "$kdir"; then die 3 "cannot store $kdir"; fi
		rm -rf "$tmp"
		touch "$kdir/.rig-complete"
		local old
		for old in "$kernel_cache"/linux-image-*; do
			[[ $old != "$kdir" && -d $old ]] && { say "removing old guest kernel ${old##*/}"; rm -rf "$old"; }
		done
	fi
	kver=$(ls "$kdir/lib/modules")
	vmlinuz="$kdir/boot/vmlinuz-$kver"
	[[ -f $vmlinuz ]] || die 3 "no kernel image $vmlinuz (delete $kdir and retry)"
	# PVH boot of the uncompressed kernel: about half the boot time of the bzImage under TCG.
	boot_kernel=$vmlinuz
	if [[ $RIG_KERNEL_BOOT == pvh ]]; then
		local vmlinux="$kdir/boot/vmlinux-$kver"
		if [[ ! -f $vmlinux && ! -f $kdir/.rig-no-pvh ]]; then
			python3 "$rig_dir/extract-vmlinux.py" "$vmlinuz" "$vmlinux" 2>>"$state/apt.log" ||
				touch "$kdir/.rig-no-pvh"
		fi
		if [[ -f $vmlinux ]]; then
			boot_kernel=$vmlinux
		else
			say "note: no PVH-capable vmlinux in $vmlinuz; booting the bzImage"
		fi
	fi
	exec 8>&-
}

# ---------------------------------------------------------------------------------------------
# Initramfs: busybox, the modules VFIO/UIO/9p need (dependencies resolved by modprobe), /init.

base_modules="irqbypass vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci uio
uio_pci_generic virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
netfs fscache 9pnet 9pnet_virtio 9p"

ensure_initramfs() { # sets initramfs
	local m line paths=() seen=" " out
	for m in $base_modules; do
		out=$(modprobe -d "$kdir" -S "$kver" --show-depends "$m" 2>&1) || {
			say "note: module $m not in kernel $kver (skipped)"
			continue
		}
		while read -r line; do
			[[ $line == insmod\ * ]] || continue
			line=${line#insmod }
			line=${line%% *}
			[[ $seen == *" $line "* ]] && continue
			seen+="$line "
			paths+=("$line")
		done <<<"$out"
	done
	initramfs="$state/initramfs.cpio"
	local key
	key=$({
		echo "initramfs layout 2 $kver"
		printf '%s\n' "${paths[@]}"
		cat "$rig_dir/guest-init.sh" /bin/busybox
	} | sha256sum | cut -d' ' -f1)
	if [[ -f $initramfs && $(cat "$state/initramfs.key" 2>/dev/null) == "$key" ]]; then
		return
	fi
	say "building initramfs (${#paths[@]} modules from $kver)"
	local tmp="$state/initramfs.tmp.$$" i=0 p name
	rm -rf "$state"/initramfs.tmp.* # leftovers of an interrupted build (we hold the lock)
	mkdir -p "$tmp/bin" "$tmp/lib/modules" "$tmp/proc" "$tmp/sys" "$tmp/dev" "$tmp/host" \
		"$tmp/rig" "$tmp/tmp" || die 3 "cannot create $tmp"
	cp /bin/busybox "$tmp/bin/busybox"
	cp "$rig_dir/guest-init.sh" "$tmp/init"
	chmod 755 "$tmp/init" "$tmp/bin/busybox"
	for p in "${paths[@]}"; do
		i=$((i + 1))
		name=$(printf '%02d-%s' "$i" "${p##*/}")
		cp "$p" "$tmp/lib/modules/$name" || die 3 "cannot copy module $p"
		echo "$name" >>"$tmp/modules.list"
	done
	# Under PVH boot a few bytes about 5 KiB before the end of the initrd get overwritten (by the
	# firmware) before the kernel unpacks it: the archive ends with a 256 KiB dummy file, .rig-pad,
	# that takes the damage.
	truncate -s 256K "$tmp/.rig-pad"
	(cd "$tmp" && {
		find . ! -name .rig-pad -print0 | LC_ALL=C sort -z
		printf './.rig-pad\0'
	} | cpio --null -o -H newc --quiet) >"$initramfs.tmp" || die 3 "cpio failed"
	mv "$initramfs.tmp" "$initramfs"
	echo "$key" >"$state/initramfs.key"
	rm -rf "$tmp"
}

ensure_images() {
	local spec name size f
	mkdir -p "$RIG_IMAGE_DIR"
	for spec in $RIG_IMAGES; do
		name=${spec%%:*} size=${spec#*:}
		f="$RIG_IMAGE_DIR/$name.img"
		if [[ $RIG_KEEP_IMAGES != 1 || ! -f $f ]]; then
			if ! { : >"$f" && truncate -s "$size" "$f"; }; then die 3 "cannot create image $f ($size)"; fi
		fi
	done
}

ensure_tools
ensure_kernel
ensure_initramfs
ensure_images
if [[ $mode == prepare ]]; then
	say "ready: kernel $kver ($kdir), initramfs $initramfs ($((SECONDS - started)) s)"
	exit 0
fi

# ---------------------------------------------------------------------------------------------
# Suites (test mode): which to run, which are already known to fail

suite_cmd() { local v="RIG_SUITE_$1"; [[ $1 =~ ^[A-Za-z0-9_]+$ ]] && echo "${!v-}"; }

# The program a suite command runs, to check before booting that it exists: the first word, for
# env the first word after its options and assignments, for an interpreter (bash, sh, python3)
# its script argument; nothing when the interpreter gets inline code (-c ...).
suite_program() {
	local -a w
	read -ra w <<<"$1"
	local i=0
	while ((i < ${#w[@]})) && [[ ${w[i]} == [A-Za-z_]*=* ]]; do i=$((i + 1)); done
	if [[ ${w[i]:-} == env || ${w[i]:-} == */env || ${w[i]:-} == exec ]]; then
		i=$((i + 1))
		while ((i < ${#w[@]})) && [[ ${w[i]} == -* || ${w[i]} == [A-Za-z_]*=* ]]; do i=$((i + 1)); done
	fi
	case ${w[i]:-} in
	bash | sh | python3 | python | */bash | */sh | */python3)
		i=$((i + 1))
		[[ ${w[i]:-} == -* ]] && return 0
		;;
	esac
	local p=${w[i]:-}
	p=${p//\"/} p=${p//\'/}
	echo "$p"
}

# The binaries the guest runs are the host's release build: make sure it is there and current
# (incremental, so a no-op when nothing changed). RIG_BUILD=0 skips it.
build_release() {
	[[ ${RIG_BUILD:-1} != 0 && -f $repo/Package.swift ]] || return 0
	command -v swift >/dev/null || { say "swift not found: using whatever is in .build/release"; return 0; }
	say "building release binaries (swift build -c release; log: $state/build.log)"
	mkdir -p "$state"
	if ! (cd "$repo" && swift build -c release) >"$state/build.log" 2>&1; then
		tail -n 30 "$state/build.log" >&2
		die 3 "swift build -c release failed (log: $state/build.log)"
	fi
}
[[ $mode == up || $mode == test ]] && build_release

suite_names=()
declare -A suite_error=()
run_suites=()
if [[ $mode == test ]]; then
	if (($#)); then suite_names=("$@"); else read -ra suite_names <<<"$RIG_SUITES"; fi
	((${#suite_names[@]})) || die 2 "no suites: the profile defines no RIG_SUITES and none were named"
	for s in "${suite_names[@]}"; do
		cmd=$(suite_cmd "$s")
		if [[ -z $cmd ]]; then
			suite_error[$s]="not defined (set RIG_SUITE_$s in the profile, $suites_file or the environment)"
			continue
		fi
		prog=$(suite_program "$cmd")
		if [[ $prog == */* ]]; then
			[[ $prog == /* ]] || prog_path="$repo/$prog"
			[[ $prog == /* ]] && prog_path=$prog
			if [[ ! -e $prog_path ]]; then
				hint=""
				[[ $prog == .build/* ]] && hint="; run swift build -c release first"
				suite_error[$s]="$prog not found$hint"
				continue
			fi
		elif [[ -n $prog ]] && ! command -v "$prog" >/dev/null; then
			suite_error[$s]="$prog not found"
			continue
		fi
		run_suites+=("$s")
	done
fi

# ---------------------------------------------------------------------------------------------
# Run directory (the writable share): guest.conf for /init, env.sh and job.sh for the chroot

run_dir="$state/run"
rm -rf "$run_dir"
mkdir -p "$run_dir/qmp" || die 3 "cannot create $run_dir"
rm -f "$state/devices" "$state/dmesg.log"
RIG_RUN_DIR=$run_dir
RIG_MODE=$mode
RIG_KERNEL_ROOT=$kdir
RIG_KERNEL_VERSION=$kver
RIG_DEVICES_FILE=/run/limitless-rig/devices
nonce="$$-$RANDOM$RANDOM"
guest_path=""
for p in ${PATH//:/ } /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
	[[ $p == /* && ":$guest_path:" != *":$p:"* ]] && guest_path+="${guest_path:+:}$p"
done

{
	echo "# generated by Scripts/rig.sh for /init (busybox sh)"
	for v in RIG_MODE RIG_REPO RIG_RUN_DIR RIG_KERNEL_ROOT RIG_HUGEPAGES RIG_EXTRA_MODULES \
		RIG_9P_CACHE; do
		echo "$v=$(shq "${!v}")"
	done
	echo "RIG_NONCE=$(shq "$nonce")"
	echo "RIG_PATH=$(shq "$guest_path")"
	echo "RIG_TERM=$(shq "${TERM:-linux}")"
} >"$run_dir/guest.conf"

{
	echo "# generated by Scripts/rig.sh: the profile's scalar RIG_* variables, for the guest"
	for v in $(compgen -v RIG_); do
		[[ $(declare -p "$v" 2>/dev/null) == "declare -"[-x]* ]] || continue
		echo "export $v=$(shq "${!v}")"
	done
} >"$run_dir/env.sh"

job_header() {
	cat <<'EOF'
# generated by Scripts/rig.sh; runs in the guest, in chroot /host, with bash
. "$RIG_ENV"
cd "$RIG_REPO" || exit 125
RIG_DEVICES=""
while read -r bdf id _; do
	[[ $bdf == \#* || -z $bdf ]] || RIG_DEVICES+="${RIG_DEVICES:+ }$bdf=$id"
done <"$RIG_DEVICES_FILE"
export RIG_DEVICES
EOF
}

{
	job_header
	case $mode in
	up)
		echo "bash -c $(shq "$RIG_MAIN_JOB")"
		;;
	run)
		printf 'set --'
		printf ' %q' "$@"
		echo
		cat <<'EOF'
command -v "$1" >/dev/null || { echo "rig: $1: command not found in the guest (cwd $PWD)" >&2; exit 127; }
exec "$@"
EOF
		;;
	shell)
		rows="" cols=""
		if [[ -t 0 ]]; then read -r rows cols < <(stty size 2>/dev/null); fi
		[[ -n $rows ]] && echo "stty rows $rows cols $cols 2>/dev/null"
		echo "export PS1='rig-guest:\\w# '"
		# shellcheck disable=SC2016 # expands in the guest
		echo 'echo "rig: guest shell in $PWD (root of the host, read-only); exit to power off"'
		echo 'exec /bin/bash --norc -i'
		;;
	test)
		cat <<'EOF'
rig_suite() { # NAME TIMEOUT COMMAND
	local name=$1 limit=$2 cmd=$3 start=$SECONDS
	echo "rig: ---- suite $name: $cmd"
	[[ -z ${RIG_TRACE:-} ]] || bash "$RIG_REPO/Scripts/rig/guest-trace.sh" start
	{
		# stdbuf: line-buffered stdio, so the output up to a crash reaches the console and file
		if ((limit > 0)); then
			PYTHONUNBUFFERED=1 timeout -k 10 "$limit" stdbuf -oL -eL bash -c "$cmd"
		else
			PYTHONUNBUFFERED=1 stdbuf -oL -eL bash -c "$cmd"
		fi
		echo $? >"$RIG_RUN_DIR/suite-$name.rc"
	} </dev/null 2>&1 | tee "$RIG_RUN_DIR/suite-$name.out"
	echo $((SECONDS - start)) >"$RIG_RUN_DIR/suite-$name.secs"
	[[ -z ${RIG_TRACE:-} ]] || bash "$RIG_REPO/Scripts/rig/guest-trace.sh" stop "$name"
	cd "$RIG_REPO" || exit 125
	bash "$RIG_REPO/Scripts/rig/guest-bind.sh" --quiet
}
EOF
		for s in "${run_suites[@]}"; do
			echo "rig_suite $s $(shq "$RIG_SUITE_TIMEOUT") $(shq "$(suite_cmd "$s")")"
		done
		echo "exit 0"
		;;
	esac
} >"$run_dir/job.sh"

# ---------------------------------------------------------------------------------------------
# QEMU command line

refuse_netdev() { die 2 "refusing '$1 $2' in profile $profile: emulated NICs must stay inside QEMU (hubport) or on loopback"; }
check_network_args() { # no user-mode networking, no tap/bridge: traffic stays inside QEMU
	local prev="" a addr
	for a in "$@"; do
		case $prev in
		-netdev | -net | -nic)
			case ${a%%,*} in
			hubport | nic | none | vhost-user) ;;
			socket | stream | dgram)
				for addr in $(tr ',' '\n' <<<"$a" | sed -n 's/^\(connect\|listen\|localaddr\|udp\|host\|addr\.host\|remote\.host\|local\.host\)=//p'); do
					[[ $addr == 127.* || $addr == localhost* || $addr == :* ]] || refuse_netdev "$prev" "$a"
				done
				[[ $a == *mcast=* ]] && refuse_netdev "$prev" "$a"
				;;
			*) refuse_netdev "$prev" "$a" ;;
			esac
			;;
		esac
		prev=$a
	done
}
check_network_args "${RIG_QEMU_DEVICES[@]}" "${RIG_QEMU_EXTRA[@]}"

iommu=$RIG_IOMMU
if [[ $iommu == *aw-bits=* ]] && ! "$qemu_bin" -device intel-iommu,help 2>/dev/null | grep -q aw-bits; then
	say "warning: this QEMU's intel-iommu has no aw-bits; using its default address width"
	iommu=${iommu/,aw-bits=+([0-9])/}
fi

case $RIG_ACCEL in
tcg)
	accel_args=(-accel tcg,thread=multi)
	accel_name=TCG
	;;
kvm)
	[[ -r /dev/kvm && -w /dev/kvm ]] || die 3 "--accel kvm: /dev/kvm is missing or not accessible"
	accel_args=(-accel kvm)
	accel_name=KVM
	# -cpu max under KVM asks for MSRs the host may refuse (QEMU aborts); take the host's CPU.
	RIG_CPU=${RIG_CPU_KVM:-host}
	;;
esac

qmp_sock="$state/qmp.sock"
rm -f "$qmp_sock" "$state/qmp.path"
if ((${#qmp_sock} > 100)); then # sun_path holds 108 bytes
	qmp_sock="/tmp/limitless-rig-$(sha256sum <<<"$state" | cut -c1-12).sock"
	rm -f "$qmp_sock"
	echo "$qmp_sock" >"$state/qmp.path"
fi
console_log="$state/console.log"
qemu_err="$state/qemu.stderr"
: >"$console_log"
: >"$qemu_err"
rm -f "$state/qemu.pid" "$state/qemu.rc"

# no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check can fail and panic
# ("timer doesn't work through Interrupt-remapped IO-APIC"); virtual machines skip it.
append="console=ttyS0 intel_iommu=on quiet panic=-1 no_timer_check $RIG_KERNEL_APPEND"
qemu_args=(
	"$qemu_bin" -name limitless-rig -nodefaults -nographic -no-reboot
	"${accel_args[@]}" -cpu "$RIG_CPU" -m "$RIG_MEMORY" -smp "$RIG_CPUS"
	-machine "$RIG_MACHINE" -device "$iommu"
	-kernel "$boot_kernel" -initrd "$initramfs" -append "$append"
	-virtfs local,path=/,mount_tag=host,security_model=passthrough,readonly=on,multidevs=remap
	-virtfs "local,path=${run_dir//,/,,},mount_tag=rigrun,security_model=none,multidevs=remap"
	-qmp "unix:${qmp_sock//,/,,},server=on,wait=off"
	-pidfile "$state/qemu.pid"
)
if [[ $mode == shell ]]; then
	qemu_args+=(-chardev "stdio,id=con0,mux=on,signal=off,logfile=${console_log//,/,,}"
		-serial chardev:con0 -mon chardev=con0,mode=readline)
else
	qemu_args+=(-chardev stdio,id=con0,signal=off -serial chardev:con0)
fi
qemu_args+=("${RIG_QEMU_DEVICES[@]}" "${RIG_QEMU_EXTRA[@]}")
printf '%q ' "${qemu_args[@]}" >"$state/qemu.cmdline"
echo >>"$state/qemu.cmdline"

# ---------------------------------------------------------------------------------------------
# Boot

relay_pid=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
	local pid
	pid=$(cat "$state/qemu.pid" 2>/dev/null) && [[ -n $pid ]] && kill "$pid" 2>/dev/null
	[[ -n $relay_pid ]] && kill "$relay_pid" 2>/dev/null
	[[ $qmp_sock != "$state/qmp.sock" ]] && rm -f "$qmp_sock"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM HUP

: >"$state/qmp-relay.log"
python3 "$rig_dir/qmp.py" --socket "$qmp_sock" --pid $$ --log "$state/qmp-relay.log" \
	relay "$run_dir/qmp" </dev/null >"$state/qmp-relay.err" 2>&1 &
relay_pid=$!

# Reads the console: everything to console.log; the job's output (between the begin and end
# markers) to stdout; of the rest, the guest's "rig: " lines (with --verbose: all) to stderr.
console_filter() {
	local line phase=boot begin="@@rig:begin:$nonce@@" end="@@rig:end:$nonce@@"
	while IFS= read -r line || [[ -n $line ]]; do
		line=${line%$'\r'}
		line=${line//$'\e'[[(]*([0-9;?])[A-Za-z]/} # firmware's terminal resets
		line=${line//$'\e'c/}
		printf '%s\n' "$line" >>"$console_log"
		case $phase in
		boot | after)
			if [[ $line == "$begin" ]]; then
				phase=job
			elif ((verbose)); then
				printf '%s\n' "$line" >&2
			elif [[ $line == *"rig: "* ]]; then
				printf 'rig: %s\n' "${line#*rig: }" >&2
			elif [[ $line == *"Kernel panic"* ]]; then
				printf '%s\n' "$line" >&2
			fi
			;;
		job)
			if [[ $line == *"$end"* ]]; then
				phase=after
				line=${line%%"$end"*}
				[[ -z $line ]] && continue
			fi
			printf '%s\n' "$line"
			;;
		esac
	done
}

skip_boot=0
if [[ $mode == test && ${#run_suites[@]} == 0 ]]; then
	say "no suite can run; not booting"
	skip_boot=1
fi
guard=$(remaining) || exit 124
((skip_boot)) || say "booting ($accel_name, ${RIG_MEMORY} MiB, profile ${profile#"$repo"/})..."
boot_start=$SECONDS
if ((skip_boot)); then
	echo 0 >"$state/qemu.rc"
	echo 0 >"$run_dir/status"
elif [[ $mode == shell ]]; then
	say "serial console: Ctrl-A x quits QEMU, Ctrl-A c toggles the monitor"
	if ((guard)); then
		timeout --foreground -k 10 "$guard" "${qemu_args[@]}" 2>"$qemu_err"
	else
		"${qemu_args[@]}" 2>"$qemu_err"
	fi
	echo $? >"$state/qemu.rc"
else
	{
		if ((guard)); then
			timeout -k 10 "$guard" "${qemu_args[@]}" </dev/null 2>"$qemu_err"
		else
			"${qemu_args[@]}" </dev/null 2>"$qemu_err"
		fi
		echo $? >"$state/qemu.rc"
	} | console_filter &
	pipe_pid=$!
	# `wait` returns early when a trapped signal arrives; the trap then exits via cleanup.
	while kill -0 "$pipe_pid" 2>/dev/null; do wait "$pipe_pid"; done
fi
qemu_rc=$(cat "$state/qemu.rc" 2>/dev/null || echo 255)
rm -f "$state/qemu.pid"
boot_secs=$((SECONDS - boot_start))

for f in devices dmesg.log; do
	[[ -f $run_dir/$f ]] && cp "$run_dir/$f" "$state/$f"
done
guest_status=""
[[ -f $run_dir/status ]] && guest_status=$(<"$run_dir/status")

# ---------------------------------------------------------------------------------------------
# Results

failure_reason="" failure_code=0
if [[ $qemu_rc == 124 || $qemu_rc == 137 ]] && [[ -z $guest_status ]]; then
	failure_reason="timed out after ${RIG_TIMEOUT} s (whole-run guard, --timeout)"
	failure_code=124
elif [[ -z $guest_status && $qemu_rc != 0 ]]; then
	failure_reason="QEMU itself failed (exit $qemu_rc$( ((qemu_rc > 128)) && echo ", signal $((qemu_rc - 128))")) before the guest reported an exit status; see 'QEMU said' below"
	failure_code=4
elif [[ -z $guest_status ]]; then
	failure_reason="the guest powered off without reporting an exit status (init failed, or the kernel panicked)"
	failure_code=4
fi
report_failure() {
	say "error: $failure_reason"
	if [[ -s $qemu_err ]]; then
		say "QEMU said:"
		sed 's/^/  /' "$qemu_err" >&2
	fi
	if ((!verbose)) && [[ -s $console_log ]]; then
		say "last console lines:"
		tail -n 15 "$console_log" | sed 's/^/  /' >&2
	fi
	say "console log: $console_log"
}
[[ -f $run_dir/bind-errors ]] && say "warning: device binding had errors (see above; console log: $console_log)"

if [[ $mode == test ]]; then
	total_pass=0 total_fail=0
	for s in "${suite_names[@]}"; do
		if [[ -n ${suite_error[$s]:-} ]]; then
			echo "rig: suite $s: FAILED: ${suite_error[$s]}"
			total_fail=$((total_fail + 1))
			continue
		fi
		out="$run_dir/suite-$s.out"
		rc=$(cat "$run_dir/suite-$s.rc" 2>/dev/null)
		secs=$(cat "$run_dir/suite-$s.secs" 2>/dev/null)
		[[ -f $out ]] && cp "$out" "$state/suite-$s.out"
		[[ -f $run_dir/trace-$s.txt ]] && cp "$run_dir/trace-$s.txt" "$state/trace-$s.txt" &&
			say "trace of suite $s: ${state#"$repo"/}/trace-$s.txt"
		if [[ -z $rc ]]; then
			if [[ -f $out ]]; then
				echo "rig: suite $s: FAILED: did not finish (${failure_reason:-guest stopped})"
			else
				echo "rig: suite $s: FAILED: did not run (${failure_reason:-guest stopped})"
			fi
			total_fail=$((total_fail + 1))
			continue
		fi
		summary=$(tr -d '\r' <"$out" | grep -E '^([A-Za-z][A-Za-z0-9_-]*:[[:space:]]*)?[0-9]+ passed, [0-9]+ failed(, [0-9]+ skipped)?[[:space:]]*$' | tail -n 1)
		if [[ -z $summary ]]; then
			how="exit $rc"
			((rc == 124)) && how="timed out after ${RIG_SUITE_TIMEOUT} s"
			((rc == 127)) && how="command not found, exit 127"
			((rc > 128 && rc != 137)) && how="crashed: signal $((rc - 128)), exit $rc"
			((rc == 137)) && how="killed (SIGKILL), exit 137"
			echo "rig: suite $s: FAILED: printed no 'N passed, N failed' summary ($how, ${secs:-?} s)"
			total_fail=$((total_fail + 1))
			continue
		fi
		[[ $summary =~ ([0-9]+)\ passed,\ ([0-9]+)\ failed ]]
		p=${BASH_REMATCH[1]} f=${BASH_REMATCH[2]}
		total_pass=$((total_pass + p))
		total_fail=$((total_fail + f))
		if ((rc != 0 && f == 0)); then
			how="exited $rc"
			((rc > 128)) && how="crashed (signal $((rc - 128)), exit $rc)"
			((rc == 124)) && how="timed out after ${RIG_SUITE_TIMEOUT} s"
			echo "rig: suite $s: FAILED: $p passed, $f failed but $how (${secs:-?} s)"
			total_fail=$((total_fail + 1))
		elif ((f > 0)); then
			echo "rig: suite $s: FAILED: $p passed, $f failed (exit $rc, ${secs:-?} s)"
		else
			echo "rig: suite $s: ok: $p passed, $f failed (${secs:-?} s)"
		fi
	done
	if [[ -n $failure_reason ]]; then
		report_failure
	elif ((total_fail && !skip_boot)); then
		say "suite outputs: $state/suite-*.out; console log: $console_log"
	fi
	((skip_boot)) || say "guest ran ${boot_secs} s; whole run $((SECONDS - started)) s"
	echo "$total_pass passed, $total_fail failed"
	if ((failure_code == 124)); then exit 124; fi
	((total_fail == 0 && failure_code == 0)) || exit 1
	exit 0
fi

if [[ -n $failure_reason ]]; then
	report_failure
	exit "$failure_code"
fi
if [[ $mode != run ]]; then
	say "guest powered off after ${boot_secs} s (exit $guest_status)"
fi
if [[ $guest_status != 0 && $mode != run ]]; then
	say "console log: $console_log"
fi
exit "$guest_status"
