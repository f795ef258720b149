#!/bin/busybox sh
# shellcheck shell=sh
# Limitless rig: /init of the guest initramfs (busybox sh, PID 1). Copied into the initramfs by
# Scripts/rig.sh; everything that changes from run to run comes through the writable share.
#
#  1. load the modules listed in /modules.list (vfio, uio, virtio, 9p) with insmod
#  2. mount the writable share "rigrun" at /rig and read /rig/guest.conf
#  3. mount the host root (read-only 9p share "host") at /host; inside it bind /dev, mount proc,
#     sysfs, tmpfs on /tmp and /run, devpts, /dev/shm, hugetlbfs; mount the writable share again
#     at its host path ($RIG_RUN_DIR) so paths match inside and outside
#  4. reserve huge pages, load $RIG_EXTRA_MODULES, bind the devices (Scripts/rig/guest-bind.sh)
#  5. run $RIG_RUN_DIR/job.sh in `chroot /host`, write its exit code to $RIG_RUN_DIR/status
#  6. save dmesg, power off

/bin/busybox mkdir -p /bin /proc /sys /dev /host /rig /tmp
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
echo # end the firmware's "Booting from ROM.." line
# What udev would add: bash's process substitution needs /dev/fd.
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
# No module autoloading: devices must come up without a kernel driver.
echo /bin/false >/proc/sys/kernel/modprobe

say() { echo "rig: $*"; }

fail() {
	say "error: $*"
	say "last kernel messages:"
	dmesg | tail -n 20
	if [ "$RIG_MODE" = shell ]; then
		say "dropping to the initramfs shell (exit to power off)"
		setsid cttyhack sh
	fi
	poweroff -f
}

while read -r ko; do
	insmod "/lib/modules/$ko" || say "error: insmod $ko failed (see dmesg)"
done </modules.list

P9OPTS=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$P9OPTS" rigrun /rig || fail "cannot mount the writable 9p share (rigrun)"
[ -r /rig/guest.conf ] || fail "/rig/guest.conf missing"
# shellcheck source=/dev/null
. /rig/guest.conf

mount -t 9p -o "$P9OPTS,ro,cache=${RIG_9P_CACHE:-none}" host /host || fail "cannot mount the host root (9p share host)"
mount --bind /dev /host/dev || fail "bind /dev"
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
# A repo under /tmp or /run (a CI clone, say) stays visible through the tmpfs mounted there.
case "$RIG_REPO/" in
/tmp/* | /run/*) mkdir -p /keep && mount --bind "/host$RIG_REPO" /keep ;;
esac
mount -t tmpfs -o mode=1777 tmpfs /host/tmp
mount -t tmpfs -o mode=755 tmpfs /host/run
if [ -d /keep ]; then
	mkdir -p "/host$RIG_REPO"
	mount --bind /keep "/host$RIG_REPO" || fail "cannot keep $RIG_REPO visible"
fi
mkdir -p /host/dev/pts /host/dev/shm /host/dev/hugepages /host/run/limitless-rig
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /host/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
mount -t hugetlbfs hugetlbfs /host/dev/hugepages
# (mkdir: a run directory under /tmp or /run lives in the tmpfs just mounted)
mkdir -p "/host$RIG_RUN_DIR" 2>/dev/null
mount --bind /rig "/host$RIG_RUN_DIR" || fail "cannot mount the run share at $RIG_RUN_DIR"

echo "${RIG_HUGEPAGES:-0}" >/proc/sys/vm/nr_hugepages
# Kernel messages go to dmesg (saved at the end), not into the job's output.
dmesg -n 2

# Everything below runs host binaries: the guest's / is the host's / (read-only).
rig_chroot() {
	chroot /host /usr/bin/env -i HOME=/tmp PATH="$RIG_PATH" TERM="${RIG_TERM:-linux}" \
		LANG=C.UTF-8 RIG_IN_GUEST=1 RIG_ENV="$RIG_RUN_DIR/env.sh" "$@"
}

if [ -n "$RIG_EXTRA_MODULES" ]; then
	say "loading modules: $RIG_EXTRA_MODULES"
	# shellcheck disable=SC2086 # word splitting wanted
	rig_chroot modprobe -d "$RIG_KERNEL_ROOT" -a $RIG_EXTRA_MODULES ||
		say "error: modprobe $RIG_EXTRA_MODULES failed"
fi

rig_chroot /bin/bash "$RIG_REPO/Scripts/rig/guest-bind.sh" || say "error: device binding failed"
rig_chroot /bin/bash "$RIG_REPO/Scripts/rig/guest-ram.sh" || say "error: serving binaries from memory failed"

if [ "$RIG_MODE" = shell ]; then
	setsid cttyhack chroot /host /usr/bin/env -i HOME=/tmp PATH="$RIG_PATH" \
		TERM="${RIG_TERM:-linux}" LANG=C.UTF-8 RIG_IN_GUEST=1 RIG_ENV="$RIG_RUN_DIR/env.sh" \
		/bin/bash "$RIG_RUN_DIR/job.sh"
	rc=$?
else
	echo "@@rig:begin:$RIG_NONCE@@"
	rig_chroot /bin/bash "$RIG_RUN_DIR/job.sh" </dev/null
	rc=$?
	echo "@@rig:end:$RIG_NONCE@@"
fi
echo "$rc" >/rig/status.tmp && mv /rig/status.tmp /rig/status
dmesg >/rig/dmesg.log 2>/dev/null
sync
poweroff -f
