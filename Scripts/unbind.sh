#!/usr/bin/env bash
# unbind.sh: give PCI functions back from vfio-pci / uio_pci_generic to their kernel drivers.
# See --help; Scripts/lib/pci.sh lists the environment hooks the tests use.
set -euo pipefail

PROG=unbind.sh
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=Scripts/lib/pci.sh
source "$SCRIPT_DIR/lib/pci.sh"

usage() {
  cat <<EOF
Usage: sudo ./Scripts/unbind.sh BDF... [--dry-run]

Gives each PCI function back to the kernel: unbinds it from vfio-pci or uio_pci_generic, clears
its driver_override, and lets the kernel probe it again, so it returns to the driver it had before
bind.sh (remembered in $RUNDIR/bind/BDF.driver) or to whichever driver the kernel picks. A device
already on a kernel driver is left alone, so running it twice is harmless.

BDF is a PCI address as lspci -D prints it, 0000:00:14.0, or the short form 00:14.0.

Options:
  --dry-run  print what would be written; changes nothing, needs no root
  --help     this text

Refuses a device whose /dev/vfio/N or /dev/uioN a process holds open (the kernel would block the
unbind until it is closed): stop that process first.
EOF
}

ADDRESSES=()

parse_args() {
  local arg
  while (($#)); do
    arg=$1
    shift
    case $arg in
      --help | -h) usage; exit 0 ;;
      --dry-run) DRY_RUN=1 ;;
      --) ADDRESSES+=("$@"); break ;;
      -*) usage_error "unknown option '$arg'" ;;
      *) ADDRESSES+=("$arg") ;;
    esac
  done
  ((${#ADDRESSES[@]})) || usage_error "no PCI address given (find one with: lspci -D -k)"
}

is_userspace_driver() { [[ $1 == "$VFIO_DRIVER" || $1 == "$UIO_DRIVER" ]]; }

# already_returned BDF: no override left and on a kernel driver, or on none with no driver to
# restore: nothing to do.
already_returned() {
  local bdf=$1 current
  current=$(pci_current_driver "$bdf")
  [[ -z $(pci_override "$bdf") ]] || return 1
  if [[ -z $current ]]; then
    [[ -z $(remembered_driver "$bdf") ]]
  elif is_userspace_driver "$current"; then
    return 1
  fi
}

# release BDF: off vfio-pci/uio_pci_generic, override cleared, kernel probes again.
release() {
  local bdf=$1 current original
  current=$(pci_current_driver "$bdf")
  original=$(remembered_driver "$bdf")
  info "$bdf ($(pci_ids "$bdf")): $(describe_driver "$current") -> ${original:-whatever the kernel picks}"
  # A kernel driver stays: only a leftover driver_override is cleared for it.
  if is_userspace_driver "$current"; then sysfs_write "$(pci_dev "$bdf")/driver/unbind" "$bdf"; fi
  [[ -z $(pci_override "$bdf") ]] || sysfs_write "$(pci_dev "$bdf")/driver_override" $'\n'
  [[ -z $original ]] || ensure_original_loaded "$original"
  sysfs_write "$SYSFS/bus/pci/drivers_probe" "$bdf"
}

# ensure_original_loaded DRIVER: a module unloaded since bind.sh is loaded again, best effort.
ensure_original_loaded() {
  [[ -d $(pci_driver_dir "$1") ]] && return 0
  ((DRY_RUN)) && { info "  would load the kernel module: modprobe $1"; return 0; }
  if is_test_mode; then
    fake_kernel modprobe "$1"
  elif ! modprobe "$1" 2>/dev/null; then
    warn "could not load the $1 module (the device's driver before bind.sh); the kernel will choose"
  fi
}

# bind_original BDF DRIVER: when the probe chose nothing or something else, ask DRIVER directly.
bind_original() {
  local bdf=$1 original=$2
  [[ -n $original && -d $(pci_driver_dir "$original") ]] || return 0
  driver_is "$bdf" "$original" && return 0
  [[ -z $(pci_current_driver "$bdf") ]] || return 0
  sysfs_write "$(pci_driver_dir "$original")/bind" "$bdf"
  wait_until "$WAIT_SECS" driver_is "$bdf" "$original" || true
}

report() {
  local bdf=$1 original=$2 now
  now=$(pci_current_driver "$bdf")
  if [[ -n $original && $now != "$original" ]]; then
    warn "$bdf had $original before bind.sh, but is now on $(describe_driver "$now"); see dmesg | tail"
  elif [[ -z $now ]]; then
    info "$bdf: released; no kernel driver claimed it (lspci -k -s $bdf lists candidate modules)"
  else
    info "$bdf: back on $now"
  fi
}

main() {
  local address bdf original
  parse_args "$@"
  guard_test_mode
  require_root "$@"
  local -a targets=()
  for address in "${ADDRESSES[@]}"; do
    bdf=$(require_device "$address") || exit
    targets+=("$bdf")
  done
  for bdf in "${targets[@]}"; do
    refuse_if_in_use "$bdf" # checked for all first, so none is released when one is busy
  done
  for bdf in "${targets[@]}"; do
    if already_returned "$bdf"; then
      info "$bdf: already released (driver: $(describe_driver "$(pci_current_driver "$bdf")"), no driver_override); nothing to do"
      continue
    fi
    original=$(remembered_driver "$bdf")
    release "$bdf"
    ((DRY_RUN)) && continue
    # The probe is synchronous for most drivers; give an asynchronous one a moment.
    [[ -z $original ]] || wait_until $((WAIT_SECS < 1 ? WAIT_SECS : 1)) driver_is "$bdf" "$original" || true
    bind_original "$bdf" "$original"
    report "$bdf" "$original"
    forget_driver "$bdf"
  done
  ((DRY_RUN)) && info "dry run: nothing was changed"
  return 0
}

main "$@"
