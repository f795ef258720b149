# shellcheck shell=bash
# Scripts/lib/bench.sh: what the rig benchmarks (Scripts/storage-bench.sh, Scripts/vfs-bench.sh,
# Scripts/storage-queues-bench.sh) share: their --help, the host side that boots a profile and
# prints the table, and finding the kernel's block device for the controller the Linux nvme
# driver keeps. Their in-guest halves count results with Tests/HIL/lib.sh like the rig's suites.
# Source it from the repository root; it only defines functions and changes no shell option.

# bench_help SCRIPT: the script's opening comment, which is its manual.
bench_help() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$1"; }

# bench_on_host PROFILE TIMEOUT SUITE NAME: boots the rig's PROFILE, runs its SUITE (the bench's
# in-guest half) and prints the table the guest printed between "==== NAME table" and
# "==== end"; returns the rig's status.
bench_on_host() {
	local profile=$1 timeout=$2 suite=$3 name=$4 status
	Scripts/rig.sh --profile "$profile" --timeout "$timeout" test "$suite"
	status=$?
	echo
	sed -n "/^==== $name table/,/^==== end/p" "${RIG_STATE_DIR:-.build-rig}/suite-$suite.out" 2>/dev/null | tr -d '\r'
	return "$status"
}

# kernel_nvme_block_device BDF: /dev/nvmeXn1 of the controller at BDF once the kernel's nvme
# driver has made it (its probe finishes asynchronously after boot); waits up to 30 s, prints
# nothing and fails if it never comes.
kernel_nvme_block_device() {
	local tries=300 node
	while ((tries-- > 0)); do
		for node in "/sys/bus/pci/devices/$1"/nvme/nvme*/nvme*n1; do
			[[ -e $node && -b /dev/${node##*/} ]] && { echo "/dev/${node##*/}"; return 0; }
		done
		sleep 0.1
	done
	return 1
}
