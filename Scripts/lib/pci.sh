# shellcheck shell=bash
# Shared helpers for Scripts/bind.sh and Scripts/unbind.sh: path roots, messages, PCI address
# handling, sysfs reads and writes, driver loading, and the checks that keep a user from unbinding
# the disk or NIC the machine runs on. Source it after setting PROG; it only defines variables and
# functions and changes no shell option.
#
# Test hooks (all optional; the defaults are the real machine):
#   LIMITLESS_SYSFS   sysfs root            (default /sys)
#   LIMITLESS_PROCFS  procfs root           (default /proc)
#   LIMITLESS_DEVFS   device node root      (default /dev)
#   LIMITLESS_RUNDIR  state directory       (default /run/limitless)
#   LIMITLESS_GROUP   group that gets /dev/vfio/N (default limitless; read by bind.sh)
#   LIMITLESS_WAIT_SECS  bound on each wait for the kernel (default 10)
#   LIMITLESS_TEST_MODE=1  TEST ONLY: no root check, no modprobe, no groupadd; refuses to run
#                     unless LIMITLESS_SYSFS and LIMITLESS_DEVFS point away from /sys and /dev.
#   LIMITLESS_FAKE_KERNEL  TEST ONLY (honoured only with LIMITLESS_TEST_MODE=1): a program run as
#                     `PROG write PATH VALUE` after every sysfs write and as `PROG modprobe MODULE`
#                     instead of modprobe, so a test can play the kernel's part on a fake tree.

SYSFS=${LIMITLESS_SYSFS:-/sys}
PROCFS=${LIMITLESS_PROCFS:-/proc}
DEVFS=${LIMITLESS_DEVFS:-/dev}
RUNDIR=${LIMITLESS_RUNDIR:-/run/limitless}
WAIT_SECS=${LIMITLESS_WAIT_SECS:-10}
DRY_RUN=0
PROG=${PROG:-limitless}

# Domain (4+ hex digits, VMD domains have 5), bus, device 00-1f, function 0-7.
BDF_RE='^[0-9a-f]{4,8}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]$'
VFIO_DRIVER=vfio-pci
UIO_DRIVER=uio_pci_generic

# ---------------------------------------------------------------------------------------------
# Messages. Errors are one line, "PROG: error: what happened", then "  hint: what to do" lines.

info() { printf '%s\n' "$*"; }

warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }

# die MESSAGE [HINT...]: exit 1.
die() {
  local message=$1 hint
  shift
  printf '%s: error: %s\n' "$PROG" "$message" >&2
  for hint in "$@"; do printf '  hint: %s\n' "$hint" >&2; done
  exit 1
}

# usage_error MESSAGE [HINT]: a mistake on the command line; exit 2.
usage_error() {
  printf '%s: error: %s\n' "$PROG" "$1" >&2
  printf '  hint: %s\n' "${2:-see $PROG --help}" >&2
  exit 2
}

# ---------------------------------------------------------------------------------------------
# Test mode and privileges.

is_test_mode() { [[ ${LIMITLESS_TEST_MODE:-0} == 1 ]]; }

# Test mode skips the root check and modprobe, so it must never act on the real /sys or /dev.
guard_test_mode() {
  is_test_mode || return 0
  if [[ $SYSFS == /sys || $DEVFS == /dev ]]; then
    die "LIMITLESS_TEST_MODE=1 needs LIMITLESS_SYSFS and LIMITLESS_DEVFS pointing at a fake tree" \
      "unset LIMITLESS_TEST_MODE to work on this machine's devices"
  fi
}

# fake_kernel ARGS...: TEST ONLY hook, see the header.
fake_kernel() {
  if is_test_mode && [[ -n ${LIMITLESS_FAKE_KERNEL:-} ]]; then
    "$LIMITLESS_FAKE_KERNEL" "$@"
  fi
}

# require_root COMMAND-LINE...: driver binding needs root (not in test mode or a dry run).
require_root() {
  is_test_mode && return 0
  ((DRY_RUN)) && return 0
  [[ $EUID -eq 0 ]] && return 0
  die "changing a device's driver needs root (running as $(id -un))" \
    "run it with sudo: sudo $0 $*; or look first with --dry-run, which needs no root"
}

# ---------------------------------------------------------------------------------------------
# PCI addresses and sysfs reads.

# normalize_bdf ADDRESS: prints the full lower-case address (0000:00:14.0); accepts 00:14.0.
normalize_bdf() {
  local address=${1,,}
  [[ $address =~ ^[0-9a-f]{2}:[01][0-9a-f]\.[0-7]$ ]] && address=0000:$address
  [[ $address =~ $BDF_RE ]] || return 1
  printf '%s\n' "$address"
}

pci_dev() { printf '%s/bus/pci/devices/%s\n' "$SYSFS" "$1"; }

pci_driver_dir() { printf '%s/bus/pci/drivers/%s\n' "$SYSFS" "$1"; }

# read_attr FILE: first line of a sysfs attribute, empty when missing.
read_attr() {
  local value=""
  [[ -r $1 ]] && { IFS= read -r value <"$1" || true; }
  printf '%s\n' "$value"
}

# link_name LINK: last path component of a symlink's target, empty when there is no link.
link_name() {
  if [[ -L $1 ]]; then
    basename -- "$(readlink -- "$1")"
  fi
}

pci_current_driver() { link_name "$(pci_dev "$1")/driver"; }
pci_class() { read_attr "$(pci_dev "$1")/class"; }
# pci_override BDF: the driver_override, empty when unset (the kernel shows "(null)").
pci_override() {
  local value
  value=$(read_attr "$(pci_dev "$1")/driver_override")
  [[ $value == "(null)" ]] || printf '%s\n' "$value"
}
pci_iommu_group() { link_name "$(pci_dev "$1")/iommu_group"; }

# pci_ids BDF: vendor:device without 0x, e.g. 1b36:0010.
pci_ids() {
  local dev vendor device
  dev=$(pci_dev "$1")
  vendor=$(read_attr "$dev/vendor")
  device=$(read_attr "$dev/device")
  printf '%s:%s\n' "${vendor#0x}" "${device#0x}"
}

# PCI-to-PCI bridges (class 0x0604xx) may stay on their driver inside a VFIO group.
pci_is_bridge() { [[ $(pci_class "$1") == 0x0604* ]]; }

# describe_driver NAME: "nvme" or "no driver".
describe_driver() {
  if [[ -n $1 ]]; then printf '%s\n' "$1"; else printf 'no driver\n'; fi
}

# require_device ADDRESS: prints the normalised address of an existing PCI function, or dies.
require_device() {
  local bdf
  bdf=$(normalize_bdf "$1") ||
    usage_error "'$1' is not a PCI address: expected DDDD:BB:DD.F (0000:00:14.0) or BB:DD.F (00:14.0)" \
      "list the addresses with: lspci -D (add -nn for vendor:device ids, -k for drivers)"
  [[ -e $(pci_dev "$bdf") ]] ||
    die "no PCI function $bdf on this machine ($(pci_dev "$bdf") does not exist)" \
      "list the addresses with: lspci -D (add -nn for vendor:device ids, -k for drivers)"
  printf '%s\n' "$bdf"
}

# ---------------------------------------------------------------------------------------------
# Writing to sysfs, loading drivers, waiting for the kernel.

# sysfs_write PATH VALUE: one write, or a dry-run line. Dies with the kernel's answer on failure.
sysfs_write() {
  local path=$1 value=$2 err
  if ((DRY_RUN)); then
    info "  would write '${value//$'\n'/\\n}' to $path"
    return 0
  fi
  if ! err=$({ printf '%s' "$value" >"$path"; } 2>&1); then
    die "the kernel refused '${value//$'\n'/\\n}' written to $path: ${err##*: }" \
      "see the kernel log for the reason: dmesg | tail"
  fi
  fake_kernel write "$path" "$value"
}

# ensure_driver_loaded NAME: modprobe NAME unless the PCI driver is already registered.
ensure_driver_loaded() {
  local driver=$1 err
  [[ -d $(pci_driver_dir "$driver") ]] && return 0
  if ((DRY_RUN)); then
    info "  would load the kernel module: modprobe $driver"
    return 0
  fi
  if is_test_mode; then
    fake_kernel modprobe "$driver"
  else
    command -v modprobe >/dev/null 2>&1 ||
      die "the $driver driver is not loaded and modprobe is not installed" "install kmod, or load $driver another way"
    err=$(modprobe "$driver" 2>&1) ||
      die "could not load the $driver kernel module: ${err:-modprobe failed}" \
        "check that the running kernel ships it: modinfo $driver"
  fi
  wait_until "$WAIT_SECS" test -d "$(pci_driver_dir "$driver")" ||
    die "the $driver driver did not appear under $(pci_driver_dir "$driver") after modprobe" "see dmesg | tail"
}

# wait_until SECONDS COMMAND...: polls COMMAND every 0.1 s; fails once SECONDS have passed.
# shellcheck source=Scripts/lib/wait.sh
source "${BASH_SOURCE[0]%/*}/wait.sh"

driver_is() { [[ $(pci_current_driver "$1") == "$2" ]]; }

# node_users NODE: "pid (command)" for every process that holds /dev/NODE open, one a line.
node_users() {
  local fd pid comm
  # find fails on processes that exit or are not ours to read; what it did find still counts.
  { find "$PROCFS"/[0-9]*/fd -maxdepth 1 -lname "/dev/$1" 2>/dev/null || true; } | while read -r fd; do
    pid=${fd#"$PROCFS"/}
    pid=${pid%%/*}
    comm=$(read_attr "$PROCFS/$pid/comm")
    printf '%s (%s)\n' "$pid" "${comm:-?}"
  done | sort -u
}

# userspace_node BDF: the node a userspace driver holds open (vfio/N or uioN), if any.
userspace_node() {
  local bdf=$1 uio
  case $(pci_current_driver "$bdf") in
    "$VFIO_DRIVER") printf 'vfio/%s\n' "$(pci_iommu_group "$bdf")" ;;
    "$UIO_DRIVER")
      for uio in "$(pci_dev "$bdf")"/uio/uio*; do
        [[ -e $uio ]] && printf '%s\n' "${uio##*/}"
      done
      ;;
  esac
  return 0
}

# refuse_if_in_use BDF: the kernel blocks an unbind while a process holds the device open.
refuse_if_in_use() {
  local bdf=$1 node users
  node=$(userspace_node "$bdf")
  [[ -n $node ]] || return 0
  users=$(node_users "$node")
  [[ -z $users ]] && return 0
  die "$bdf is in use: /dev/$node is held open by ${users//$'\n'/, }; unbinding now would hang until it is closed" \
    "stop that process (or the Limitless server it runs) first, then run this again"
}

# ---------------------------------------------------------------------------------------------
# Remembering the original driver (for unbind.sh).

record_path() { printf '%s/bind/%s.driver\n' "$RUNDIR" "$1"; }

# remember_driver BDF DRIVER: keeps the kernel driver the device had before Limitless took it.
remember_driver() {
  local bdf=$1 driver=$2
  case $driver in "" | "$VFIO_DRIVER" | "$UIO_DRIVER") return 0 ;; esac
  if ((DRY_RUN)); then
    info "  would remember driver $driver in $(record_path "$bdf")"
    return 0
  fi
  if ! { mkdir -p "$RUNDIR/bind" && printf '%s\n' "$driver" >"$(record_path "$bdf")"; } 2>/dev/null; then
    warn "could not record $bdf's driver $driver in $RUNDIR/bind; unbind.sh will let the kernel choose"
  fi
}

remembered_driver() { read_attr "$(record_path "$1")"; }

forget_driver() { ((DRY_RUN)) || rm -f -- "$(record_path "$1")"; }

# read_file FILE: its contents, nothing when it cannot be read. (The scripts read through
# here-strings, never process substitution: a minimal /dev, as in the rig's guest, has no /dev/fd.)
read_file() { cat -- "$1" 2>/dev/null || true; }

# ---------------------------------------------------------------------------------------------
# What the running system depends on: mounted file systems, swap and the default route.

sysfs_real() { readlink -f -- "$SYSFS"; }

# nearest_pci_function PATH: the last DDDD:BB:DD.F component of a resolved sysfs path.
nearest_pci_function() {
  local rel=${1#"$(sysfs_real)"} part found=""
  local -a parts
  IFS=/ read -r -a parts <<<"$rel"
  for part in "${parts[@]}"; do
    [[ $part =~ $BDF_RE ]] && found=$part
  done
  [[ -n $found ]] && printf '%s\n' "$found"
  return 0
}

# block_pci_functions NAME: PCI functions under block device NAME (follows dm/md slaves).
block_pci_functions() {
  local path slave
  path=$(readlink -f -- "$SYSFS/class/block/$1") || return 0
  [[ -e $path ]] || return 0
  for slave in "$path"/slaves/* "${path%/*}"/slaves/*; do
    [[ -e $slave ]] && block_pci_functions "${slave##*/}"
  done
  nearest_pci_function "$path"
}

# block_name SOURCE MOUNTPOINT: the block device name (nvme0n1p2, dm-0) of a mount source.
block_name() {
  local source=$1 mountpoint=$2 node name majmin
  node=$DEVFS/${source#/dev/}
  if [[ -e $node ]]; then name=$(basename -- "$(readlink -f -- "$node")"); else name=${source##*/}; fi
  if [[ ! -e $SYSFS/class/block/$name && $mountpoint == / ]] && ! is_test_mode; then
    # /dev/root and friends: ask for the device number of / instead.
    majmin=$(mountpoint -d / 2>/dev/null) || majmin=""
    [[ -n $majmin ]] && name=$(basename -- "$(readlink -f -- "$SYSFS/dev/block/$majmin")")
  fi
  [[ -e $SYSFS/class/block/$name ]] && printf '%s\n' "$name"
  return 0
}

# unescape_mount PATH: /proc/mounts writes a space as \040.
unescape_mount() { printf '%b\n' "$1"; }

# storage_dependents: "BDF<TAB>what" for each mounted block file system and swap area.
storage_dependents() {
  local source mountpoint name bdf _rest
  while read -r source mountpoint _rest; do
    [[ $source == /dev/* ]] || continue
    mountpoint=$(unescape_mount "$mountpoint")
    name=$(block_name "$source" "$mountpoint")
    [[ -n $name ]] || continue
    for bdf in $(block_pci_functions "$name"); do
      printf '%s\tholds the file system mounted at %s (%s, from %s)\n' "$bdf" "$mountpoint" "$source" "$PROCFS/mounts"
    done
  done <<<"$(read_file "$PROCFS/mounts")"
  while read -r source _rest; do
    [[ $source == /dev/* ]] || continue
    name=$(block_name "$source" "")
    [[ -n $name ]] || continue
    for bdf in $(block_pci_functions "$name"); do
      printf '%s\tholds the active swap area %s (from %s)\n' "$bdf" "$source" "$PROCFS/swaps"
    done
  done <<<"$(read_file "$PROCFS/swaps" | tail -n +2)"
}

# default_route_interfaces: "IFACE<TAB>family" for each IPv4 and IPv6 default route that is up.
default_route_interfaces() {
  local iface dest flags mask plen f
  local -a f6
  # /proc/net/route: Iface Destination Gateway Flags RefCnt Use Metric Mask ...; RTF_UP is 0x1.
  while read -r iface dest _ flags _ _ _ mask _; do
    [[ $dest == 00000000 && $mask == 00000000 && $flags =~ ^[0-9A-Fa-f]+$ ]] || continue
    ((16#$flags & 1)) && printf '%s\tIPv4\n' "$iface"
  done <<<"$(read_file "$PROCFS/net/route" | tail -n +2)"
  # /proc/net/ipv6_route: dest plen src splen next-hop metric refcnt use flags iface. Skip routes
  # with RTF_REJECT (0x200): lo carries the kernel's own unreachable default.
  while read -r -a f6; do
    ((${#f6[@]} == 10)) || continue
    dest=${f6[0]} plen=${f6[1]} f=${f6[8]} iface=${f6[9]}
    [[ $dest =~ ^0{32}$ && $plen == 00 && $f =~ ^[0-9A-Fa-f]+$ ]] || continue
    ((16#$f & 1 && !(16#$f & 0x200))) && printf '%s\tIPv6\n' "$iface"
  done <<<"$(read_file "$PROCFS/net/ipv6_route")"
  return 0
}

# netdev_pci_functions IFACE: PCI functions under a network interface (follows bond/bridge lowers).
netdev_pci_functions() {
  local path lower
  path=$(readlink -f -- "$SYSFS/class/net/$1") || return 0
  [[ -e $path ]] || return 0
  for lower in "$path"/lower_*; do
    [[ -e $lower ]] && netdev_pci_functions "${lower##*/lower_}"
  done
  nearest_pci_function "$path"
}

# network_dependents: "BDF<TAB>what" for each function behind a default route.
network_dependents() {
  local iface family bdf
  while IFS=$'\t' read -r iface family; do
    [[ -n $iface ]] || continue
    for bdf in $(netdev_pci_functions "$iface"); do
      printf '%s\tcarries the %s default route (interface %s, from %s)\n' "$bdf" "$family" "$iface" \
        "$PROCFS/net/$([[ $family == IPv4 ]] && echo route || echo ipv6_route)"
    done
  done <<<"$(default_route_interfaces | sort -u)"
}

# system_dependents: everything above, computed once per run.
system_dependents() {
  storage_dependents
  network_dependents
}
