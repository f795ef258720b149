#!/usr/bin/env bash
# Tests/HIL/bind-suite.sh: Scripts/bind.sh and Scripts/unbind.sh against the real kernel, real sysfs
# and real vfio-pci / uio_pci_generic, inside the rig's emulated machine:
#   Scripts/rig.sh run -- bash Tests/HIL/bind-suite.sh      (or as the rig's "bind" suite)
# It takes the emulated NVMe (1b36:0010), xHCI (1b36:000d) and e1000e (8086:10d3), which the rig
# binds to vfio-pci at boot, through unbind -> bind -> uio -> vfio, and leaves every one of them on
# vfio-pci. On a machine with spare hardware, name the functions instead (they end on vfio-pci):
#   sudo bash Tests/HIL/bind-suite.sh 0000:03:00.0 ...
# Prints PASS/FAIL per case and ends with one "N passed, N failed" line; exit 1 on any failure.
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$HERE/../.." && pwd)
# shellcheck source=Tests/Scripts/lib/assert.sh
source "$REPO/Tests/Scripts/lib/assert.sh"
# shellcheck source=Tests/HIL/lib.sh
source "$HERE/lib.sh"

EMULATED_IDS="1b36:0010 1b36:000d 8086:10d3"
GROUP_NAME=limitless
WAIT_SECONDS=10
TRANSCRIPT=${RIG_RUN_DIR:-${TMPDIR:-/tmp}}/bind-suite.transcript
DEVICES=()

# ---------------------------------------------------------------------------------------------
# Looking at the real machine.

iommu_group() { basename "$(readlink "/sys/bus/pci/devices/$1/iommu_group")"; }

uio_node() {
  local entry
  for entry in /sys/bus/pci/devices/"$1"/uio/uio*; do
    [[ -e $entry ]] && printf '%s\n' "${entry##*/}"
  done
  return 0
}

is_char() { [[ -c $1 ]]; }
is_gone() { [[ ! -e $1 ]]; }
group_exists() { getent group "$GROUP_NAME" >/dev/null 2>&1; }

find_devices() {
  local dev ids
  for dev in /sys/bus/pci/devices/*; do
    ids=$(<"$dev/vendor"):$(<"$dev/device")
    ids=${ids//0x/}
    [[ " $EMULATED_IDS " == *" $ids "* ]] && DEVICES+=("${dev##*/}")
  done
  return 0
}

# ---------------------------------------------------------------------------------------------
# Cases. Each takes the PCI address it works on.

case_bad_address() {
  run bind.sh 00:zz.0
  expect_rc 2
  expect_error_line bind.sh
  expect_out "'00:zz.0' is not a PCI address"
  run bind.sh 0000:7f:1f.7
  expect_rc 1
  expect_error_line bind.sh
  expect_out "no PCI function 0000:7f:1f.7"
}

case_already_bound() {
  local bdf=$1
  expect_driver "$bdf" vfio-pci
  run bind.sh "$bdf"
  expect_rc 0
  expect_out "$bdf: already bound to vfio-pci (group $(iommu_group "$bdf"))"
  run bind.sh --group "${bdf#0000:}"
  expect_rc 0
  expect_out "already bound to vfio-pci"
  expect_driver "$bdf" vfio-pci
}

case_dry_run() {
  local bdf=$1
  run bind.sh --dry-run --uio "$bdf"
  expect_rc 0
  expect_out "would write 'uio_pci_generic' to /sys/bus/pci/devices/$bdf/driver_override"
  expect_out "dry run: nothing was changed"
  expect_driver "$bdf" vfio-pci
}

case_in_use_refused() {
  local bdf=$1 node holder
  node=/dev/vfio/$(iommu_group "$bdf")
  (
    exec 9<>"$node" 3>&- # fd 3 carries the case's verdict; the holder must not keep it open
    exec sleep 30
  ) &
  holder=$!
  # shellcheck disable=SC2064 # expand now: holder is local and gone when the trap runs
  trap "kill $holder 2>/dev/null || true" EXIT
  wait_until "$WAIT_SECONDS" test -e "/proc/$holder/fd/9" || fail "could not hold $node open for the test"
  run unbind.sh "$bdf"
  kill "$holder" 2>/dev/null || true
  wait "$holder" 2>/dev/null || true
  expect_rc 1
  expect_error_line unbind.sh
  expect_out "$node is held open by $holder (sleep)"
  expect_driver "$bdf" vfio-pci
}

case_unbind() {
  local bdf=$1 node
  node=/dev/vfio/$(iommu_group "$bdf")
  run unbind.sh "$bdf"
  expect_rc 0
  [[ $(sysfs_driver "$bdf") != vfio-pci ]] || fail "$bdf is still on vfio-pci"
  wait_until "$WAIT_SECONDS" is_gone "$node" || fail "$node is still there 10 s after unbind"
  [[ $(<"/sys/bus/pci/devices/$bdf/driver_override") == "(null)" ]] ||
    fail "driver_override still holds '$(<"/sys/bus/pci/devices/$bdf/driver_override")'"
  run unbind.sh "$bdf"
  expect_rc 0
}

case_bind() {
  local bdf=$1 node
  node=/dev/vfio/$(iommu_group "$bdf")
  run bind.sh "$bdf"
  expect_rc 0
  expect_driver "$bdf" vfio-pci
  wait_until "$WAIT_SECONDS" is_char "$node" || fail "$node did not appear"
  expect_out "bound to vfio-pci, IOMMU group $(iommu_group "$bdf"): $node"
  expect_out "limitless-hil smoke --device $bdf"
  if group_exists; then
    [[ $(stat -c '%G %a' "$node") == "$GROUP_NAME 660" ]] || fail "$node is $(stat -c '%G %a' "$node"), expected $GROUP_NAME 660"
  else
    # The guest sees the host root read-only, so groupadd cannot add the group: a warning, no chgrp.
    expect_out "bind.sh: warning:"
    expect_out "owner and mode unchanged"
  fi
}

case_uio_and_back() {
  local bdf=$1 node uio
  node=/dev/vfio/$(iommu_group "$bdf")
  run bind.sh --uio "$bdf"
  expect_rc 0
  expect_driver "$bdf" uio_pci_generic
  uio=$(uio_node "$bdf")
  [[ -n $uio ]] || fail "no uio device under /sys/bus/pci/devices/$bdf/uio"
  wait_until "$WAIT_SECONDS" is_char "/dev/$uio" || fail "/dev/$uio did not appear"
  expect_out "bound to uio_pci_generic: /dev/$uio"
  expect_out "no IOMMU protection"
  wait_until "$WAIT_SECONDS" is_gone "$node" || fail "$node is still there on uio_pci_generic"
  run bind.sh "$bdf"
  expect_rc 0
  expect_driver "$bdf" vfio-pci
  wait_until "$WAIT_SECONDS" is_char "$node" || fail "$node did not come back"
  wait_until "$WAIT_SECONDS" is_gone "/dev/$uio" || fail "/dev/$uio is still there on vfio-pci"
}

case_all_on_vfio() {
  local bdf
  for bdf in "${DEVICES[@]}"; do
    expect_driver "$bdf" vfio-pci
    is_char "/dev/vfio/$(iommu_group "$bdf")" || fail "/dev/vfio/$(iommu_group "$bdf") is missing"
  done
}

# ---------------------------------------------------------------------------------------------

# restore: every device back on vfio-pci, whatever a failed case left behind: through bind.sh,
# and when that fails (it is what is under test) by writing to sysfs directly.
restore() {
  local bdf dev
  for bdf in "${DEVICES[@]}"; do
    [[ $(sysfs_driver "$bdf") == vfio-pci ]] && continue
    bash "$REPO/Scripts/bind.sh" "$bdf" >>"$TRANSCRIPT" 2>&1 && continue
    dev=/sys/bus/pci/devices/$bdf
    { [[ ! -L $dev/driver ]] || echo "$bdf" >"$dev/driver/unbind"; } 2>/dev/null || true
    echo vfio-pci 2>/dev/null >"$dev/driver_override" || true
    echo "$bdf" 2>/dev/null >/sys/bus/pci/drivers_probe || true
    [[ $(sysfs_driver "$bdf") == vfio-pci ]] || printf 'bind-suite: could not put %s back on vfio-pci\n' "$bdf" >&2
  done
}

preconditions() {
  [[ $EUID -eq 0 ]] || { echo "bind-suite: needs root: run it in the rig (Scripts/rig.sh run -- bash Tests/HIL/bind-suite.sh)" >&2; exit 2; }
  if (($# == 0)) && [[ ${RIG_IN_GUEST:-0} != 1 ]]; then
    echo "bind-suite: runs inside the rig's emulated machine (Scripts/rig.sh run -- bash Tests/HIL/bind-suite.sh); on real hardware name the spare functions to use" >&2
    exit 2
  fi
}

main() {
  local bdf
  preconditions "$@"
  cd "$REPO"
  : >"$TRANSCRIPT"
  if (($#)); then DEVICES=("$@"); else find_devices; fi
  if ((${#DEVICES[@]} == 0)); then
    echo "FAIL devices: none of $EMULATED_IDS in this machine"
    FAILED=1
    summary || exit 1
  fi
  trap restore EXIT
  restore # a device the rig left elsewhere starts on vfio-pci
  run_case "bad address" case_bad_address
  run_case "in use refused ${DEVICES[0]}" case_in_use_refused "${DEVICES[0]}"
  for bdf in "${DEVICES[@]}"; do
    run_case "already bound $bdf" case_already_bound "$bdf"
    run_case "dry run $bdf" case_dry_run "$bdf"
    run_case "unbind $bdf" case_unbind "$bdf"
    run_case "bind $bdf" case_bind "$bdf"
    run_case "uio and back $bdf" case_uio_and_back "$bdf"
    restore
  done
  run_case "all on vfio-pci" case_all_on_vfio
  ((FAILED == 0)) || echo "commands and their output: $TRANSCRIPT"
  summary
}

main "$@"
