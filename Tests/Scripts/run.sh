#!/usr/bin/env bash
# Tests/Scripts/run.sh: tests of Scripts/bind.sh, unbind.sh, install.sh and the udev helper against
# fake sysfs/procfs/devfs trees in a temporary directory (Tests/Scripts/lib/fake-tree.sh), with
# Tests/Scripts/fake-kernel.sh playing the kernel. Touches nothing of the real machine; needs no
# root. Prints PASS/FAIL per case and ends with one "N passed, N failed" line.
#   bash Tests/Scripts/run.sh [CASE...]     (default: every case_* below)
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$HERE/../.." && pwd)
# shellcheck source=Tests/Scripts/lib/assert.sh
source "$HERE/lib/assert.sh"
# shellcheck source=Tests/Scripts/lib/fake-tree.sh
source "$HERE/lib/fake-tree.sh"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/limitless-script-tests.XXXXXX")
# KEEP_TEST_TREES=1 keeps the trees: each case's commands and output are in TREE/CASE/transcript.
if [[ ${KEEP_TEST_TREES:-0} == 1 ]]; then echo "trees kept in $TMP"; else trap 'rm -rf -- "$TMP"' EXIT; fi

# ---------------------------------------------------------------------------------------------
# Checks on the fake tree (the generic ones are in lib/assert.sh).

expect_file() { [[ -e $1 ]] || fail "${1#"$ROOT"/} does not exist"; }
expect_no_file() { [[ ! -e $1 ]] || fail "${1#"$ROOT"/} exists but should not"; }
expect_content() {
  [[ $(cat "$1" 2>/dev/null) == "$2" ]] || fail "${1#"$ROOT"/} holds '$(cat "$1" 2>/dev/null)', expected '$2'"
}
kernel_log() { cat "$ROOT/kernel.log" 2>/dev/null || true; }
expect_logged() { grep -qxF -- "$1" <<<"$(kernel_log)" || fail "kernel saw no '$1'; it saw: $(oneline "$(kernel_log)")"; }
expect_nothing_written() { [[ -z $(kernel_log) ]] || fail "something was written: $(oneline "$(kernel_log)")"; }
writes() { kernel_log | wc -l; }

# Environment of every case: the documented test hooks, pointing at this case's fake tree. The
# fake kernel acts at once, so no wait for it is needed (LIMITLESS_WAIT_SECS=0: look once).
enter_test_mode() {
  export LIMITLESS_TEST_MODE=1 \
    LIMITLESS_SYSFS=$ROOT/sys LIMITLESS_PROCFS=$ROOT/proc LIMITLESS_DEVFS=$ROOT/dev \
    LIMITLESS_RUNDIR=$ROOT/run/limitless LIMITLESS_FAKE_KERNEL=$HERE/fake-kernel.sh \
    LIMITLESS_GROUP LIMITLESS_WAIT_SECS=0 FAKE_ROOT=$ROOT \
    LIMITLESS_VFIO_CONF=$ROOT/etc/limitless/vfio-devices.conf
  LIMITLESS_GROUP=$(id -gn) # a group chgrp to works without root
}

# ---------------------------------------------------------------------------------------------
# bind.sh

case_help_each_script() {
  local script
  for script in bind.sh unbind.sh install.sh "$REPO/udev/limitless-bind-at-boot"; do
    run "$script" --help
    expect_rc 0
    expect_out "Usage:"
  done
}

case_bad_address() {
  standard_machine
  run bind.sh 00:zz.0
  expect_rc 2
  expect_error_line bind.sh
  expect_out "'00:zz.0' is not a PCI address"
  expect_out "lspci -D"
  run unbind.sh 0000:00:14
  expect_rc 2
  expect_error_line unbind.sh
}

case_missing_device() {
  standard_machine
  run bind.sh 0000:05:00.0
  expect_rc 1
  expect_error_line bind.sh
  expect_out "no PCI function 0000:05:00.0"
  expect_out "lspci -D"
  expect_nothing_written
}

case_unknown_option_and_no_address() {
  standard_machine
  run bind.sh --frobnicate 00:14.0
  expect_rc 2
  expect_out "unknown option '--frobnicate'"
  run bind.sh
  expect_rc 2
  expect_out "no PCI address given"
}

case_iommu_off() {
  standard_machine
  rm -rf "$ROOT"/sys/kernel/iommu_groups/* "$ROOT"/sys/devices/pci0000:00/*/iommu_group
  run bind.sh 00:14.0
  expect_rc 1
  expect_error_line bind.sh
  expect_out "the IOMMU is off"
  expect_out "intel_iommu=on"
  expect_out "amd_iommu=on"
  expect_out "VT-d"
  expect_out "--uio"
  expect_nothing_written
  expect_driver 0000:00:14.0 xhci_hcd
}

case_bind_short_address() {
  standard_machine
  run bind.sh 01:00.0
  expect_rc 0
  expect_driver 0000:01:00.0 vfio-pci
  expect_logged "write sys/bus/pci/devices/0000:01:00.0/driver/unbind 0000:01:00.0"
  expect_logged "write sys/bus/pci/devices/0000:01:00.0/driver_override vfio-pci"
  expect_logged "write sys/bus/pci/drivers_probe 0000:01:00.0"
  expect_content "$ROOT/sys/bus/pci/devices/0000:01:00.0/driver_override" vfio-pci
  expect_content "$ROOT/sys/bus/pci/drivers/nvme/unbind" 0000:01:00.0
  expect_content "$ROOT/run/limitless/bind/0000:01:00.0.driver" nvme
  expect_file "$ROOT/dev/vfio/5"
  [[ $(stat -c %a "$ROOT/dev/vfio/5") == 660 ]] || fail "/dev/vfio/5 has mode $(stat -c %a "$ROOT/dev/vfio/5")"
  [[ $(stat -c %G "$ROOT/dev/vfio/5") == "$LIMITLESS_GROUP" ]] || fail "/dev/vfio/5 not in group $LIMITLESS_GROUP"
  expect_out "bound to vfio-pci, IOMMU group 5"
  expect_out "Members of group $LIMITLESS_GROUP may open the node"
  expect_out ".build/release/limitless-hil smoke --device 0000:01:00.0"
  expect_out "limitless-supervisor --config servers.conf"
  expect_driver 0000:00:1c.0 pcieport # the bridge in the same group stays
}

case_group_missing_warns() {
  # As in the rig's guest, where groupadd cannot write the read-only /etc/group.
  standard_machine
  LIMITLESS_GROUP=limitless-test-no-such-group
  run bind.sh 0000:00:14.0
  expect_rc 0
  expect_out "bind.sh: warning: test mode: group limitless-test-no-such-group does not exist"
  expect_out "(owner and mode unchanged)"
  expect_out "Only root may open the node"
  expect_driver 0000:00:14.0 vfio-pci
}

case_idempotent_second_run() {
  standard_machine
  run bind.sh 0000:00:14.0
  expect_rc 0
  local before
  before=$(writes)
  run bind.sh 0000:00:14.0
  expect_rc 0
  expect_out "already bound to vfio-pci (group 7)"
  [[ $(writes) == "$before" ]] || fail "second run wrote to sysfs: $(tail -n +$((before + 1)) "$ROOT/kernel.log" | tr '\n' '|')"
  expect_driver 0000:00:14.0 vfio-pci
}

case_group_member_refused() {
  standard_machine
  run bind.sh 0000:02:00.0
  expect_rc 1
  expect_error_line bind.sh
  expect_out "IOMMU group 9 of 0000:02:00.0 also holds 0000:02:00.1 (driver snd_hda_intel, class 0x040300)"
  expect_out "--group"
  expect_nothing_written
  expect_driver 0000:02:00.0 nouveau
}

case_group_flag_binds_all() {
  standard_machine
  run bind.sh --group 0000:02:00.0
  expect_rc 0
  expect_driver 0000:02:00.0 vfio-pci
  expect_driver 0000:02:00.1 vfio-pci
  expect_content "$ROOT/run/limitless/bind/0000:02:00.1.driver" snd_hda_intel
  expect_out "0000:02:00.1: bound to vfio-pci, IOMMU group 9"
}

case_bridge_in_group_is_fine_and_bridge_refused() {
  standard_machine
  run bind.sh 0000:00:1c.0
  expect_rc 1
  expect_out "is a PCI bridge"
  expect_nothing_written
}

case_rootfs_device_refused() {
  standard_machine
  run bind.sh 0000:03:00.0
  expect_rc 1
  expect_error_line bind.sh
  expect_out "refusing to take 0000:03:00.0 from its driver"
  expect_out "mounted at / (/dev/mapper/vg-root"
  expect_out "mounted at /boot/efi (/dev/nvme1n1p1"
  expect_out "--force"
  expect_nothing_written
  expect_driver 0000:03:00.0 nvme
}

case_rootfs_force_overrides() {
  standard_machine
  run bind.sh --force 0000:03:00.0
  expect_rc 0
  expect_out "--force: binding 0000:03:00.0"
  expect_driver 0000:03:00.0 vfio-pci
}

case_swap_device_refused() {
  standard_machine
  printf '/dev/nvme0n1\t\t\t\tpartition\t8388604\t\t0\t\t-2\n' >>"$ROOT/proc/swaps"
  run bind.sh 01:00.0
  expect_rc 1
  expect_out "holds the active swap area /dev/nvme0n1"
}

case_default_route_nic_refused() {
  standard_machine
  run bind.sh 0000:00:1f.6
  expect_rc 1
  expect_error_line bind.sh
  expect_out "carries the IPv4 default route (interface eth0"
  expect_nothing_written
  expect_driver 0000:00:1f.6 e1000e
}

case_ipv6_default_route_refused() {
  standard_machine
  : >"$ROOT/proc/net/route"
  fake_default_route6 eth0
  run bind.sh 0000:00:1f.6
  expect_rc 1
  expect_out "carries the IPv6 default route (interface eth0"
}

case_dry_run_changes_nothing() {
  standard_machine
  run bind.sh --dry-run 0000:01:00.0
  expect_rc 0
  expect_out "would write 'vfio-pci' to $ROOT/sys/bus/pci/devices/0000:01:00.0/driver_override"
  expect_out "dry run: nothing was changed"
  expect_nothing_written
  expect_driver 0000:01:00.0 nvme
  expect_no_file "$ROOT/run/limitless"
}

case_loads_vfio_pci_when_missing() {
  standard_machine
  rm -rf "$ROOT/sys/bus/pci/drivers/vfio-pci"
  run bind.sh 0000:00:14.0
  expect_rc 0
  expect_logged "modprobe vfio-pci"
  expect_driver 0000:00:14.0 vfio-pci
}

case_kernel_refuses_probe() {
  standard_machine
  : >"$ROOT/fake/0000:00:14.0.refuse"
  run bind.sh 0000:00:14.0
  expect_rc 1
  expect_error_line bind.sh
  expect_out "the kernel did not bind vfio-pci to 0000:00:14.0 (its driver is now: no driver)"
  expect_out "unbind.sh 0000:00:14.0"
}

case_several_addresses() {
  standard_machine
  run bind.sh 0000:00:14.0 01:00.0
  expect_rc 0
  expect_driver 0000:00:14.0 vfio-pci
  expect_driver 0000:01:00.0 vfio-pci
}

case_uio_without_iommu() {
  standard_machine
  rm -rf "$ROOT"/sys/kernel/iommu_groups/* "$ROOT"/sys/devices/pci0000:00/*/iommu_group
  run bind.sh --uio 0000:00:14.0
  expect_rc 0
  expect_logged "modprobe uio_pci_generic"
  expect_logged "write sys/bus/pci/devices/0000:00:14.0/driver_override uio_pci_generic"
  expect_driver 0000:00:14.0 uio_pci_generic
  expect_out "bound to uio_pci_generic: $ROOT/dev/uio0"
  expect_out "no IOMMU protection"
  expect_out "INTx"
  expect_out "pagemap"
  run bind.sh --uio 0000:00:14.0
  expect_rc 0
  expect_out "already bound to uio_pci_generic"
}

case_uio_and_back_to_vfio() {
  standard_machine
  run bind.sh 0000:00:14.0
  expect_rc 0
  run bind.sh --uio 0000:00:14.0
  expect_rc 0
  expect_driver 0000:00:14.0 uio_pci_generic
  expect_no_file "$ROOT/dev/vfio/7"
  expect_content "$ROOT/run/limitless/bind/0000:00:14.0.driver" xhci_hcd
  run bind.sh 0000:00:14.0
  expect_rc 0
  expect_driver 0000:00:14.0 vfio-pci
  expect_no_file "$ROOT/dev/uio0"
  expect_file "$ROOT/dev/vfio/7"
}

case_not_root() {
  # No test mode: the root check comes before anything reads or writes the real /sys.
  local -a as_user=()
  if [[ $EUID -eq 0 ]]; then
    command -v setpriv >/dev/null || fail "setpriv (util-linux) is needed to drop root"
    as_user=(setpriv --reuid=65534 --regid=65534 --clear-groups)
  fi
  RC=0
  OUT=$(env -u LIMITLESS_TEST_MODE "${as_user[@]}" bash "$REPO/Scripts/bind.sh" 0000:00:14.0 2>&1) || RC=$?
  expect_rc 1
  expect_out "bind.sh: error: changing a device's driver needs root"
  expect_out "sudo"
}

case_test_mode_guard() {
  RC=0
  OUT=$(env -u LIMITLESS_SYSFS -u LIMITLESS_DEVFS bash "$REPO/Scripts/bind.sh" 0000:00:14.0 2>&1) || RC=$?
  expect_rc 1
  expect_out "LIMITLESS_TEST_MODE=1 needs LIMITLESS_SYSFS and LIMITLESS_DEVFS pointing at a fake tree"
}

case_in_use_refused() {
  standard_machine
  run bind.sh 0000:00:14.0
  expect_rc 0
  fake_open 4242 usb_server vfio/7
  run unbind.sh 0000:00:14.0
  expect_rc 1
  expect_error_line unbind.sh
  expect_out "/dev/vfio/7 is held open by 4242 (usb_server)"
  expect_driver 0000:00:14.0 vfio-pci
  run bind.sh --uio 0000:00:14.0
  expect_rc 1
  expect_out "held open by 4242 (usb_server)"
}

# ---------------------------------------------------------------------------------------------
# unbind.sh

case_unbind_restores() {
  standard_machine
  run bind.sh 0000:01:00.0
  expect_rc 0
  run unbind.sh 0000:01:00.0
  expect_rc 0
  expect_logged "write sys/bus/pci/devices/0000:01:00.0/driver/unbind 0000:01:00.0"
  expect_content "$ROOT/sys/bus/pci/drivers/vfio-pci/unbind" 0000:01:00.0
  expect_logged "write sys/bus/pci/devices/0000:01:00.0/driver_override \\n"
  expect_content "$ROOT/sys/bus/pci/devices/0000:01:00.0/driver_override" "(null)"
  expect_driver 0000:01:00.0 nvme
  expect_no_file "$ROOT/dev/vfio/5"
  expect_no_file "$ROOT/run/limitless/bind/0000:01:00.0.driver"
  expect_out "0000:01:00.0: back on nvme"
  local before
  before=$(writes)
  run unbind.sh 0000:01:00.0
  expect_rc 0
  expect_out "already released (driver: nvme, no driver_override); nothing to do"
  [[ $(writes) == "$before" ]] || fail "second unbind wrote to sysfs"
}

case_unbind_binds_remembered_driver() {
  # The kernel's probe picks nothing (no default), so unbind.sh binds the remembered driver.
  standard_machine
  run bind.sh 0000:00:14.0
  expect_rc 0
  rm "$ROOT/fake/0000:00:14.0.default"
  run unbind.sh 0000:00:14.0
  expect_rc 0
  expect_logged "write sys/bus/pci/drivers/xhci_hcd/bind 0000:00:14.0"
  expect_driver 0000:00:14.0 xhci_hcd
}

case_unbind_without_record() {
  # As in the rig: vfio-pci bound at boot, no record, no kernel driver for the device.
  standard_machine
  run bind.sh 0000:00:14.0
  rm -f "$ROOT/run/limitless/bind/0000:00:14.0.driver" "$ROOT/fake/0000:00:14.0.default"
  run unbind.sh 00:14.0
  expect_rc 0
  [[ -z $(sysfs_driver 0000:00:14.0) ]] || fail "0000:00:14.0 still has a driver"
  expect_out "no kernel driver claimed it"
  expect_no_file "$ROOT/dev/vfio/7"
  local before
  before=$(writes)
  run unbind.sh 00:14.0
  expect_rc 0
  expect_out "already released (driver: no driver, no driver_override)"
  [[ $(writes) == "$before" ]] || fail "second unbind wrote to sysfs"
}

case_unbind_leftover_override_keeps_kernel_driver() {
  standard_machine
  printf 'vfio-pci\n' >"$ROOT/sys/bus/pci/devices/0000:03:00.0/driver_override"
  run unbind.sh 0000:03:00.0
  expect_rc 0
  expect_logged "write sys/bus/pci/devices/0000:03:00.0/driver_override \\n"
  ! grep -q unbind <<<"$(kernel_log)" || fail "unbound a kernel driver: $(oneline "$(kernel_log)")"
  expect_driver 0000:03:00.0 nvme
}

case_unbind_uio() {
  standard_machine
  run bind.sh --uio 0000:00:1f.6 --force
  expect_rc 0
  run unbind.sh 0000:00:1f.6
  expect_rc 0
  expect_driver 0000:00:1f.6 e1000e
  expect_no_file "$ROOT/dev/uio0"
}

# ---------------------------------------------------------------------------------------------
# udev helper

case_boot_helper_binds_listed() {
  standard_machine
  mkdir -p "$ROOT/etc/limitless"
  printf '# test\n01:00.0   # data disk\n  1B36:000D\n\n' >"$LIMITLESS_VFIO_CONF"
  run "$REPO/udev/limitless-bind-at-boot" 0000:01:00.0
  expect_rc 0
  expect_driver 0000:01:00.0 vfio-pci
  expect_logged "write sys/bus/pci/devices/0000:01:00.0/driver_override vfio-pci"
  expect_logged "write sys/bus/pci/devices/0000:01:00.0/driver/unbind 0000:01:00.0"
  run "$REPO/udev/limitless-bind-at-boot" 0000:00:14.0
  expect_rc 0
  expect_driver 0000:00:14.0 vfio-pci
  local before
  before=$(writes)
  run "$REPO/udev/limitless-bind-at-boot" 0000:00:1f.6
  expect_rc 0
  expect_driver 0000:00:1f.6 e1000e
  run "$REPO/udev/limitless-bind-at-boot" 0000:01:00.0
  expect_rc 0
  [[ $(writes) == "$before" ]] || fail "unlisted or already bound devices were written to"
}

case_boot_helper_unbound_device_and_missing_module() {
  # Early boot: vfio-pci not loaded yet, the device not yet claimed by any driver.
  standard_machine
  rm -rf "$ROOT/sys/bus/pci/drivers/vfio-pci"
  rm "$ROOT/sys/bus/pci/devices/0000:00:14.0/driver" "$ROOT/sys/bus/pci/drivers/xhci_hcd/0000:00:14.0"
  mkdir -p "$ROOT/etc/limitless"
  echo 1b36:000d >"$LIMITLESS_VFIO_CONF"
  run "$REPO/udev/limitless-bind-at-boot" 0000:00:14.0
  expect_rc 0
  expect_logged "modprobe vfio-pci"
  expect_driver 0000:00:14.0 vfio-pci
}

case_boot_helper_without_config() {
  standard_machine
  run "$REPO/udev/limitless-bind-at-boot" 0000:01:00.0
  expect_rc 0
  expect_nothing_written
  expect_driver 0000:01:00.0 nvme
}

# ---------------------------------------------------------------------------------------------
# install.sh

fake_build() {
  local name
  mkdir -p "$ROOT/build"
  for name in "$@"; do
    printf '#!/bin/sh\necho %s\n' "$name" >"$ROOT/build/$name"
    chmod +x "$ROOT/build/$name"
  done
}

case_install_layout() {
  fake_build storage_server vfs_server power_mgmt_daemon limitless-supervisor serverctl limitless-hil
  run install.sh --prefix "$ROOT/system" --build-dir "$ROOT/build"
  expect_rc 0
  local path
  for path in servers/drivers/storage_server servers/fs/vfs_server servers/services/power_mgmt_daemon \
    servers/services/limitless-supervisor bin/serverctl bin/limitless-hil; do
    [[ -x $ROOT/system/$path ]] || fail "$path not installed (or not executable)"
  done
  expect_no_file "$ROOT/system/servers/drivers/usb_server"
  expect_out "skipped (not built in $ROOT/build): usb_server limitless-fs limitless-bench"
  expect_out "6 of 9 binaries installed"
  expect_no_file "$ROOT/etc"
}

case_install_udev_with_destdir() {
  fake_build usb_server
  run install.sh --destdir "$ROOT/stage" --build-dir "$ROOT/build" --udev
  expect_rc 0
  [[ -x $ROOT/stage/system/servers/drivers/usb_server ]] || fail "usb_server not installed under the default prefix"
  cmp -s "$REPO/udev/70-limitless-vfio.rules" "$ROOT/stage/etc/udev/rules.d/70-limitless-vfio.rules" ||
    fail "udev rules not installed"
  [[ -x $ROOT/stage/usr/lib/limitless/limitless-bind-at-boot ]] || fail "boot helper not installed executable"
  expect_file "$ROOT/stage/etc/limitless/vfio-devices.conf.example"
  expect_file "$ROOT/stage/etc/limitless/vfio-devices.conf"
  echo 01:00.0 >"$ROOT/stage/etc/limitless/vfio-devices.conf"
  run install.sh --destdir "$ROOT/stage" --build-dir "$ROOT/build" --udev
  expect_rc 0
  expect_content "$ROOT/stage/etc/limitless/vfio-devices.conf" 01:00.0
  expect_out "kept your"
}

case_install_dry_run_and_nothing_built() {
  fake_build vfs_server
  run install.sh --dry-run --prefix "$ROOT/system" --build-dir "$ROOT/build" --udev --destdir "$ROOT/stage"
  expect_rc 0
  expect_out "would install $ROOT/build/vfs_server -> $ROOT/stage$ROOT/system/servers/fs/vfs_server"
  expect_no_file "$ROOT/stage"
  expect_no_file "$ROOT/system"
  run install.sh --prefix "$ROOT/system" --build-dir "$ROOT/empty"
  expect_rc 1
  expect_error_line install.sh
  expect_out "swift build -c release"
  run install.sh --prefix relative/dir
  expect_rc 2
}

# ---------------------------------------------------------------------------------------------

case_shellcheck() {
  RC=0
  OUT=$(cd "$REPO" && shellcheck -x Scripts/bind.sh Scripts/unbind.sh Scripts/install.sh Scripts/lib/pci.sh \
    udev/limitless-bind-at-boot Tests/Scripts/run.sh Tests/Scripts/fake-kernel.sh \
    Tests/Scripts/lib/fake-tree.sh Tests/Scripts/lib/assert.sh Tests/HIL/bind-suite.sh Tests/HIL/uio-suite.sh Tests/HIL/storage-tool-suite.sh \
    Tests/HIL/vfs-suite.sh Tests/HIL/storage-kill-suite.sh Tests/HIL/lib.sh Scripts/storage-bench.sh Scripts/vfs-bench.sh \
    Scripts/storage-queues-bench.sh Scripts/lib/bench.sh Scripts/lib/wait.sh 2>&1) || RC=$?
  expect_rc 0
}

case_no_process_substitution() {
  # The rig's guest (and other minimal systems) have no /dev/fd, so <(...) fails there.
  local hits
  hits=$(cd "$REPO" && grep -n '<(' Scripts/bind.sh Scripts/unbind.sh Scripts/lib/pci.sh \
    udev/limitless-bind-at-boot Tests/HIL/bind-suite.sh Tests/Scripts/lib/assert.sh) || true
  [[ -z $hits ]] || fail "process substitution needs /dev/fd: $(oneline "$hits")"
}

# fake_case NAME: case_NAME in test mode on a fresh tree $TMP/NAME.
# Scripts/rig/guest-trace.sh (RIG_TRACE) against a plain directory standing for tracefs.
case_rig_trace_records_the_named_events() {
  local fs=$ROOT/tracefs runs=$ROOT/rig-run trace=$REPO/Scripts/rig/guest-trace.sh
  mkdir -p "$fs/per_cpu/cpu0" "$fs/per_cpu/cpu1" "$runs"
  printf 'sched:sched_switch\nsched:sched_wakeup\n' >"$fs/available_events"
  printf 'overrun: 0\n' >"$fs/per_cpu/cpu0/stats"
  printf 'overrun: 0\n' >"$fs/per_cpu/cpu1/stats"
  echo 1 >"$fs/tracing_on"
  echo 'old events' >"$fs/trace"
  export RIG_TRACEFS=$fs RIG_RUN_DIR=$runs RIG_TRACE_BUFFER_KB=64
  RIG_TRACE='sched:sched_switch sched:no_such_event' run "$trace" start
  expect_rc 0
  expect_out "no event 'sched:no_such_event' in this kernel"
  expect_content "$fs/set_event" "sched:sched_switch"
  expect_content "$fs/buffer_size_kb" 64
  expect_content "$fs/trace" ""
  expect_content "$fs/tracing_on" 1
  printf '# tracer: nop\n a-1 [000] d..2. 1.0: sched_switch: x\n b-2 [001] d..2. 1.1: sched_switch: y\n' >"$fs/trace"
  printf 'overrun: 3\n' >"$fs/per_cpu/cpu1/stats"
  RIG_TRACE='sched:sched_switch' run "$trace" stop standby
  expect_rc 0
  expect_content "$fs/tracing_on" 0
  expect_content "$fs/set_event" ""
  expect_out "2 events of suite standby saved (3 lost: raise RIG_TRACE_BUFFER_KB)"
  [[ $(grep -c sched_switch "$runs/trace-standby.txt") == 2 ]] || fail "trace-standby.txt lacks the events"
  # Only unknown events: nothing recorded, said so, exit 1 (the suite still runs).
  RIG_TRACE='sched:no_such_event' run "$trace" start
  expect_rc 1
  expect_out "no event to record; not tracing"
  expect_content "$fs/tracing_on" 0
  # RIG_TRACE empty: nothing touched.
  echo 7 >"$fs/buffer_size_kb"
  RIG_TRACE='' run "$trace" start
  expect_rc 0
  expect_content "$fs/buffer_size_kb" 7
  RIG_TRACE='sched:sched_switch' run "$trace" bogus
  expect_rc 2
  expect_out "usage: guest-trace.sh start | stop SUITE"
}

fake_case() {
  ROOT=$TMP/$1
  TRANSCRIPT=$ROOT/transcript
  mkdir -p "$ROOT"
  enter_test_mode
  "case_$1"
}

main() {
  local name
  local -a cases=("$@")
  ROOT=$TMP/.template
  mkdir -p "$ROOT"
  build_standard_machine
  FAKE_TEMPLATE=$ROOT
  ((${#cases[@]})) || mapfile -t cases < <(declare -F | awk '$3 ~ /^case_/ { sub(/^case_/, "", $3); print $3 }')
  for name in "${cases[@]}"; do
    if [[ $name == shellcheck ]] && ! command -v shellcheck >/dev/null; then
      printf 'SKIP shellcheck: not installed (apt-get install -y shellcheck); not counted\n'
    elif declare -F "case_$name" >/dev/null; then
      run_case "$name" fake_case "$name"
    else
      printf 'FAIL %s: no such case\n' "$name"
      FAILED=$((FAILED + 1))
    fi
  done
  summary
}

main "$@"
