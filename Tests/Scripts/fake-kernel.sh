#!/usr/bin/env bash
# TEST ONLY. Plays the kernel's part on a fake tree (Tests/Scripts/lib/fake-tree.sh) for the
# scripts under test, which call it through LIMITLESS_FAKE_KERNEL (honoured only together with
# LIMITLESS_TEST_MODE=1):
#   fake-kernel.sh write PATH VALUE   after the script wrote VALUE to the sysfs file PATH
#   fake-kernel.sh modprobe MODULE    instead of modprobe
# Every call is appended to $FAKE_ROOT/kernel.log ("write REL-PATH VALUE" / "modprobe MODULE"),
# paths relative to FAKE_ROOT, newlines in values shown as \n. Then it does what Linux would:
# unbind removes the driver link (and the VFIO/UIO node), drivers_probe binds driver_override or,
# without one, the driver named in fake/BDF.default, a driver's bind file binds that driver.
set -euo pipefail

ROOT=${FAKE_ROOT:?FAKE_ROOT must name the fake tree}
SYSFS=$ROOT/sys
DEVFS=$ROOT/dev

log() { printf '%s\n' "$*" >>"$ROOT/kernel.log"; }

dev_dir() { readlink -f "$SYSFS/bus/pci/devices/$1"; }

group_of() { [[ -L $(dev_dir "$1")/iommu_group ]] && basename "$(readlink "$(dev_dir "$1")/iommu_group")"; }

driver_of() { [[ -L $(dev_dir "$1")/driver ]] && basename "$(readlink "$(dev_dir "$1")/driver")"; }

attach() {
  local bdf=$1 driver=$2 dir uio=0
  dir=$(dev_dir "$bdf")
  [[ -d $SYSFS/bus/pci/drivers/$driver && ! -e $ROOT/fake/$bdf.refuse ]] || return 0
  ln -sr "$SYSFS/bus/pci/drivers/$driver" "$dir/driver"
  ln -sr "$dir" "$SYSFS/bus/pci/drivers/$driver/$bdf"
  case $driver in
    vfio-pci) : >"$DEVFS/vfio/$(group_of "$bdf")" ;;
    uio_pci_generic)
      while [[ -e $DEVFS/uio$uio ]]; do uio=$((uio + 1)); done
      mkdir -p "$dir/uio/uio$uio"
      : >"$DEVFS/uio$uio"
      ;;
  esac
}

group_still_on_vfio() {
  local member
  for member in "$SYSFS/kernel/iommu_groups/$1/devices"/*; do
    [[ $(driver_of "${member##*/}" || true) == vfio-pci ]] && return 0
  done
  return 1
}

detach() {
  local bdf=$1 driver dir node
  dir=$(dev_dir "$bdf")
  driver=$(driver_of "$bdf") || return 0
  rm -f "$dir/driver" "$SYSFS/bus/pci/drivers/$driver/$bdf"
  case $driver in
    vfio-pci) group_still_on_vfio "$(group_of "$bdf")" || rm -f "$DEVFS/vfio/$(group_of "$bdf")" ;;
    uio_pci_generic)
      for node in "$dir"/uio/uio*; do rm -f "$DEVFS/${node##*/}"; done
      rm -rf "$dir/uio"
      ;;
  esac
}

probe() {
  local bdf=$1 dir choice
  dir=$(dev_dir "$bdf")
  [[ -L $dir/driver ]] && return 0
  choice=$(cat "$dir/driver_override")
  [[ $choice == "(null)" || -z $choice ]] && choice=$(cat "$ROOT/fake/$bdf.default" 2>/dev/null || true)
  [[ -z $choice ]] || attach "$bdf" "$choice"
}

on_write() {
  local path=$1 value=$2 rel
  rel=${path#"$ROOT"/}
  log "write $rel ${value//$'\n'/\\n}"
  case $rel in
    sys/bus/pci/drivers_probe) probe "$value" ;;
    sys/bus/pci/drivers/*/unbind | sys/bus/pci/devices/*/driver/unbind) detach "$value" ;;
    sys/bus/pci/drivers/*/bind) attach "$value" "$(basename "$(dirname "$rel")")" ;;
    */driver_override) [[ -n ${value//$'\n'/} ]] || printf '(null)\n' >"$path" ;;
  esac
}

case ${1:-} in
  write) on_write "$2" "$3" ;;
  modprobe)
    log "modprobe $2"
    mkdir -p "$SYSFS/bus/pci/drivers/$2"
    : >"$SYSFS/bus/pci/drivers/$2/bind"
    : >"$SYSFS/bus/pci/drivers/$2/unbind"
    ;;
  *) echo "fake-kernel.sh: unknown call: $*" >&2; exit 2 ;;
esac
