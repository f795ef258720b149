#!/usr/bin/env bash
# bind.sh: hand PCI functions to vfio-pci (or uio_pci_generic) so Limitless's userspace drivers
# can use them. See --help; Scripts/lib/pci.sh lists the environment hooks the tests use.
set -euo pipefail

PROG=bind.sh
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=Scripts/lib/pci.sh
source "$SCRIPT_DIR/lib/pci.sh"

LIMITLESS_GROUP_NAME=${LIMITLESS_GROUP:-limitless}

usage() {
  cat <<EOF
Usage: sudo ./Scripts/bind.sh BDF... [--group] [--uio] [--force] [--dry-run]

Binds each PCI function to vfio-pci so a Limitless driver can open /dev/vfio/GROUP, and gives
that node to group $LIMITLESS_GROUP_NAME (mode 0660). BDF is a PCI address as lspci -D prints it,
0000:00:14.0, or the short form 00:14.0 (domain 0000). Running it again on a bound device does
nothing and says so.

Options:
  --group    also bind the other functions of the device's IOMMU group (vfio-pci needs every
             non-bridge function of a group on vfio-pci or on no driver)
  --uio      bind uio_pci_generic instead: works without an IOMMU, but gives no DMA protection,
             legacy INTx interrupts only, and DMA addresses need root (/proc/self/pagemap)
  --force    bind even a device that holds a mounted file system, swap, or the default route
  --dry-run  check everything and print what would be written; changes nothing, needs no root
  --help     this text

Refuses, with the reason and what to do: an address that does not exist, an IOMMU that is off,
an IOMMU group with other functions on other drivers (unless --group), a device the running
system depends on (unless --force), and a device whose node a process holds open.

The driver the device had is remembered in $RUNDIR/bind/BDF.driver; ./Scripts/unbind.sh BDF
gives the device back to it.

Examples:
  sudo ./Scripts/bind.sh 0000:00:14.0
  sudo ./Scripts/bind.sh --group 01:00.0
  ./Scripts/bind.sh --dry-run 00:1f.6
EOF
}

GROUP_MODE=0
ACCESS_GRANTED=1 # cleared when a node could not be given to the group
UIO=0
FORCE=0
ADDRESSES=()

parse_args() {
  local arg
  while (($#)); do
    arg=$1
    shift
    case $arg in
      --help | -h) usage; exit 0 ;;
      --group) GROUP_MODE=1 ;;
      --uio) UIO=1 ;;
      --force) FORCE=1 ;;
      --dry-run) DRY_RUN=1 ;;
      --) ADDRESSES+=("$@"); break ;;
      -*) usage_error "unknown option '$arg'" ;;
      *) ADDRESSES+=("$arg") ;;
    esac
  done
  ((${#ADDRESSES[@]})) || usage_error "no PCI address given (find one with: lspci -D)"
  if ((UIO && GROUP_MODE)); then
    warn "--group has no meaning with --uio (UIO knows no IOMMU groups); ignoring it"
    GROUP_MODE=0
  fi
}

target_driver() { if ((UIO)); then echo "$UIO_DRIVER"; else echo "$VFIO_DRIVER"; fi; }

# ---------------------------------------------------------------------------------------------
# Checks before anything is written.

iommu_enabled() {
  local entry
  for entry in "$SYSFS"/kernel/iommu_groups/*; do
    [[ -e $entry ]] && return 0
  done
  return 1
}

check_iommu() {
  local bdf=$1
  iommu_enabled ||
    die "the IOMMU is off ($SYSFS/kernel/iommu_groups is empty), so vfio-pci cannot fence $bdf's DMA" \
      "turn it on: enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the BIOS, add intel_iommu=on or amd_iommu=on (and iommu=pt) to the kernel command line, reboot" \
      "or bind with --uio instead: no IOMMU needed, but no DMA protection either"
  [[ -n $(pci_iommu_group "$bdf") ]] ||
    die "$bdf has no IOMMU group ($(pci_dev "$bdf")/iommu_group is missing) although the IOMMU is on" \
      "the IOMMU does not cover this device: see dmesg | grep -i -e DMAR -e IOMMU, or bind with --uio"
}

check_not_bridge() {
  local bdf=$1
  pci_is_bridge "$bdf" || return 0
  die "$bdf is a PCI bridge (class $(pci_class "$bdf")); $(target_driver) drives endpoint functions only" \
    "bind the device behind the bridge instead (lspci -D -t shows the tree)"
}

# group_members BDF: the other functions in BDF's IOMMU group.
group_members() {
  local bdf=$1 member
  for member in "$SYSFS/kernel/iommu_groups/$(pci_iommu_group "$bdf")/devices"/*; do
    [[ -e $member && ${member##*/} != "$bdf" ]] && printf '%s\n' "${member##*/}"
  done
  return 0
}

# A group is usable by vfio when every non-bridge function is on vfio-pci, pci-stub or no driver.
member_blocks_group() {
  local member=$1
  pci_is_bridge "$member" && return 1
  case $(pci_current_driver "$member") in
    "" | "$VFIO_DRIVER" | pci-stub) return 1 ;;
  esac
  return 0
}

# add_to_plan BDF: appends BDF to PLAN unless it is there already.
PLAN=()
add_to_plan() {
  local bdf
  for bdf in "${PLAN[@]}"; do [[ $bdf == "$1" ]] && return 0; done
  PLAN+=("$1")
}

# plan_group BDF: adds BDF (and with --group its group) to PLAN, or dies naming the blockers.
plan_group() {
  local bdf=$1 group member driver joined
  local -a blockers=()
  group=$(pci_iommu_group "$bdf")
  add_to_plan "$bdf"
  while read -r member; do
    [[ -n $member ]] || continue
    pci_is_bridge "$member" && continue
    driver=$(pci_current_driver "$member")
    if member_blocks_group "$member"; then
      blockers+=("$member (driver $driver, class $(pci_class "$member"))")
    fi
    if ((GROUP_MODE)); then
      add_to_plan "$member"
    elif [[ -z $driver ]]; then
      info "note: $member shares IOMMU group $group with $bdf and has no driver; vfio allows that (--group binds it too)"
    fi
  done <<<"$(group_members "$bdf")"
  ((${#blockers[@]} == 0 || GROUP_MODE)) && return 0
  joined=$(printf '%s; ' "${blockers[@]}")
  die "IOMMU group $group of $bdf also holds ${joined%; }: vfio-pci can only hand out a group whose functions are all on vfio-pci (bridges aside)" \
    "bind the whole group with: sudo ./Scripts/bind.sh --group $bdf (each function listed loses its driver)" \
    "or choose a device alone in its group: ls $SYSFS/kernel/iommu_groups/*/devices"
}

# check_not_needed_by_system BDF DEPENDENTS: refuses a device holding /, swap or the route.
check_not_needed_by_system() {
  local bdf=$1 dependents=$2 line what=""
  while IFS=$'\t' read -r line; do
    [[ $line == "$bdf"$'\t'* ]] && what+="${what:+; and }${line#*$'\t'}"
  done <<<"$dependents"
  [[ -n $what ]] || return 0
  if ((FORCE)); then
    warn "--force: binding $bdf although it $what"
    return 0
  fi
  die "refusing to take $bdf from its driver: it $what; the running system would lose it" \
    "pick another device (lspci -D; findmnt and ip route show what each one carries), or pass --force if you accept that"
}

# ---------------------------------------------------------------------------------------------
# Group ownership of /dev/vfio/N.

group_exists() {
  if command -v getent >/dev/null 2>&1; then
    getent group "$1" >/dev/null 2>&1
  else
    grep -q "^$1:" /etc/group 2>/dev/null
  fi
}

# ensure_group NAME: creates the system group if needed; fails (with a warning) when it cannot.
ensure_group() {
  local group=$1 err
  group_exists "$group" && return 0
  if is_test_mode; then
    warn "test mode: group $group does not exist and is not created"
    return 1
  fi
  if ! command -v groupadd >/dev/null 2>&1; then
    warn "groupadd is not installed, so group $group cannot be created; the device node stays root-only"
    return 1
  fi
  if err=$(groupadd --system "$group" 2>&1); then
    info "created system group $group"
    return 0
  fi
  warn "could not create group $group (${err:-groupadd failed}); the device node stays root-only (create the group and run bind.sh again)"
  return 1
}

# grant_node_access NODE: chgrp NODE to the limitless group, mode 0660.
grant_node_access() {
  local node=$1 group=$LIMITLESS_GROUP_NAME
  if ((DRY_RUN)); then
    info "  would give $node to group $group, mode 0660"
    return 0
  fi
  ensure_group "$group" || return 1
  if ! { chgrp -- "$group" "$node" && chmod 0660 -- "$node"; } 2>/dev/null; then
    warn "could not give $node to group $group (chgrp/chmod failed); it stays as it was"
    return 1
  fi
}

# ---------------------------------------------------------------------------------------------
# Binding.

# wait_for_node BDF: prints the node (vfio/N or uioN) once the kernel has made it.
wait_for_node() {
  local bdf=$1 node
  wait_until "$WAIT_SECS" test -n "$(userspace_node "$bdf")" || true
  node=$(userspace_node "$bdf")
  [[ -n $node ]] || die "$bdf is on $(target_driver) but the kernel made no device for it in $WAIT_SECS s" "see dmesg | tail"
  wait_until "$WAIT_SECS" test -e "$DEVFS/$node" ||
    die "$DEVFS/$node did not appear within $WAIT_SECS s after binding $bdf" \
      "is devtmpfs mounted on $DEVFS? see dmesg | tail, then run bind.sh again"
  printf '%s\n' "$node"
}

# rebind BDF DRIVER: unbind the current driver, set driver_override, let the kernel probe.
rebind() {
  local bdf=$1 driver=$2 current
  current=$(pci_current_driver "$bdf")
  info "$bdf ($(pci_ids "$bdf"), class $(pci_class "$bdf")): $(describe_driver "$current") -> $driver"
  remember_driver "$bdf" "$current"
  [[ -z $current ]] || sysfs_write "$(pci_dev "$bdf")/driver/unbind" "$bdf"
  sysfs_write "$(pci_dev "$bdf")/driver_override" "$driver"
  sysfs_write "$SYSFS/bus/pci/drivers_probe" "$bdf"
  ((DRY_RUN)) && return 0
  wait_until "$WAIT_SECS" driver_is "$bdf" "$driver" ||
    die "the kernel did not bind $driver to $bdf (its driver is now: $(describe_driver "$(pci_current_driver "$bdf")"))" \
      "see the reason in dmesg | tail; ./Scripts/unbind.sh $bdf gives it back to its kernel driver"
}

# report_vfio BDF NODE ALREADY: the outcome for one function on vfio-pci.
report_vfio() {
  local bdf=$1 node=$2 already=$3 group access
  group=${node#vfio/}
  if grant_node_access "$DEVFS/$node"; then
    access="group $LIMITLESS_GROUP_NAME, mode 0660"
  else
    access="owner and mode unchanged"
    ACCESS_GRANTED=0
  fi
  if ((already)); then
    info "$bdf: already bound to vfio-pci (group $group), $DEVFS/$node ($access)"
  else
    info "$bdf: bound to vfio-pci, IOMMU group $group: $DEVFS/$node ($access)"
  fi
}

report_uio() {
  local bdf=$1 node=$2 already=$3
  if ((already)); then
    info "$bdf: already bound to uio_pci_generic ($DEVFS/$node)"
  else
    info "$bdf: bound to uio_pci_generic: $DEVFS/$node"
  fi
}

print_next_steps() {
  local first=$1
  if ((UIO)); then
    cat <<EOF
UIO limits: no IOMMU protection (the device can DMA to any physical memory), INTx interrupts only
(no MSI/MSI-X), and drivers need root to read physical addresses from /proc/self/pagemap. With the
IOMMU on in translated mode the device's DMA faults; boot with iommu=pt, or use vfio-pci.
EOF
  elif ((ACCESS_GRANTED)); then
    info "Members of group $LIMITLESS_GROUP_NAME may open the node (add one with: sudo usermod -aG $LIMITLESS_GROUP_NAME USER, then log in again)."
  else
    info "Only root may open the node: run the drivers as root, or create group $LIMITLESS_GROUP_NAME and run bind.sh again."
  fi
  cat <<EOF
Next: check the device:  .build/release/limitless-hil smoke --device $first
      run the servers:   limitless-supervisor --config servers.conf
      give it back:      sudo ./Scripts/unbind.sh $first
EOF
}

# ---------------------------------------------------------------------------------------------

# plan_bindings TARGETS...: fills PLAN with every function to bind, each once, targets first.
plan_bindings() {
  local bdf
  for bdf in "$@"; do
    ((UIO)) || check_iommu "$bdf"
    check_not_bridge "$bdf"
    if ((UIO)); then add_to_plan "$bdf"; else plan_group "$bdf"; fi
  done
}

preflight() {
  local driver=$1 bdf dependents=""
  shift
  for bdf in "$@"; do
    driver_is "$bdf" "$driver" && continue
    [[ -n $dependents ]] || dependents=$(system_dependents)$'\n'
    check_not_needed_by_system "$bdf" "$dependents"
    refuse_if_in_use "$bdf"
  done
}

main() {
  local address bdf driver node already
  local -a targets=()
  parse_args "$@"
  guard_test_mode
  require_root "$@"
  for address in "${ADDRESSES[@]}"; do
    bdf=$(require_device "$address") || exit
    targets+=("$bdf")
  done
  driver=$(target_driver)
  plan_bindings "${targets[@]}"
  preflight "$driver" "${PLAN[@]}"
  ((DRY_RUN)) && info "dry run: checks passed; this is what bind.sh would do:"
  ensure_driver_loaded "$driver"
  for bdf in "${PLAN[@]}"; do
    if driver_is "$bdf" "$driver"; then already=1; else already=0; rebind "$bdf" "$driver"; fi
    if ((DRY_RUN)); then
      ((already)) && info "$bdf: already bound to $driver"
      continue
    fi
    node=$(wait_for_node "$bdf") || exit
    if ((UIO)); then report_uio "$bdf" "$node" "$already"; else report_vfio "$bdf" "$node" "$already"; fi
  done
  if ((DRY_RUN)); then
    info "dry run: nothing was changed"
  else
    print_next_steps "${targets[0]}"
  fi
}

main "$@"
