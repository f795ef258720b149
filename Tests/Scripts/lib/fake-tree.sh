# shellcheck shell=bash
# Builds fake sysfs/procfs/devfs trees for Tests/Scripts/run.sh, shaped like the real ones:
#   sys/devices/pci0000:00/[PARENT/]BDF/{vendor,device,class,driver_override,driver->,iommu_group->}
#   sys/bus/pci/devices/BDF -> the device, sys/bus/pci/drivers/NAME/{bind,unbind,new_id,BDF->}
#   sys/bus/pci/drivers_probe, sys/kernel/iommu_groups/N/devices/BDF -> the device
#   sys/class/block/NAME -> .../BDF/nvme/nvmeX/DISK[/PART], sys/class/net/IF -> .../BDF/net/IF
#   proc/mounts, proc/swaps, proc/net/route, proc/net/ipv6_route, dev/..., run/
# The fake kernel's own knobs live outside sysfs in fake/: fake/BDF.default names the driver the
# kernel would pick for BDF, fake/BDF.refuse makes every probe of BDF fail.
# All functions take the tree root from $ROOT.

fake_tree() {
  mkdir -p "$ROOT"/sys/{devices/pci0000:00,devices/virtual/block,bus/pci/devices,bus/pci/drivers} \
    "$ROOT"/sys/{kernel/iommu_groups,class/block,class/net} "$ROOT"/proc/net "$ROOT"/dev/vfio \
    "$ROOT"/run "$ROOT"/fake
  : >"$ROOT/sys/bus/pci/drivers_probe"
  : >"$ROOT/proc/mounts"
  printf 'Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n' >"$ROOT/proc/swaps"
  printf 'Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n' \
    >"$ROOT/proc/net/route"
  : >"$ROOT/proc/net/ipv6_route"
}

fake_driver() {
  local dir=$ROOT/sys/bus/pci/drivers/$1
  mkdir -p "$dir"
  : >"$dir/bind"
  : >"$dir/unbind"
  : >"$dir/new_id"
}

fake_dev_path() { readlink -f "$ROOT/sys/bus/pci/devices/$1"; }

# fake_pci BDF VENDOR:DEVICE CLASS DRIVER GROUP [PARENT_BDF]: DRIVER or GROUP may be "-" (none).
fake_pci() {
  local bdf=$1 ids=$2 class=$3 driver=$4 group=$5 parent=${6:-} dir
  if [[ -n $parent ]]; then dir=$(fake_dev_path "$parent")/$bdf; else dir=$ROOT/sys/devices/pci0000:00/$bdf; fi
  mkdir -p "$dir"
  printf '0x%s\n' "${ids%:*}" >"$dir/vendor"
  printf '0x%s\n' "${ids#*:}" >"$dir/device"
  printf '%s\n' "$class" >"$dir/class"
  printf '(null)\n' >"$dir/driver_override" # what the kernel shows when no override is set
  ln -sr "$dir" "$ROOT/sys/bus/pci/devices/$bdf"
  if [[ $group != - ]]; then
    mkdir -p "$ROOT/sys/kernel/iommu_groups/$group/devices"
    ln -sr "$dir" "$ROOT/sys/kernel/iommu_groups/$group/devices/$bdf"
    ln -sr "$ROOT/sys/kernel/iommu_groups/$group" "$dir/iommu_group"
  fi
  if [[ $driver != - ]]; then
    fake_attach "$bdf" "$driver"
    printf '%s\n' "$driver" >"$ROOT/fake/$bdf.default"
  fi
}

fake_attach() {
  local bdf=$1 driver=$2 dir
  dir=$(fake_dev_path "$bdf")
  [[ -d $ROOT/sys/bus/pci/drivers/$driver ]] || fake_driver "$driver"
  ln -sr "$ROOT/sys/bus/pci/drivers/$driver" "$dir/driver"
  ln -sr "$dir" "$ROOT/sys/bus/pci/drivers/$driver/$bdf"
}

# fake_disk BDF CTRL DISK [PART...]: an NVMe disk with partitions, plus their /dev nodes.
fake_disk() {
  local bdf=$1 ctrl=$2 disk=$3 part dir
  shift 3
  dir=$(fake_dev_path "$bdf")/nvme/$ctrl/$disk
  mkdir -p "$dir"
  ln -sr "$dir" "$ROOT/sys/class/block/$disk"
  : >"$ROOT/dev/$disk"
  for part in "$@"; do
    mkdir -p "$dir/$part"
    : >"$dir/$part/partition"
    ln -sr "$dir/$part" "$ROOT/sys/class/block/$part"
    : >"$ROOT/dev/$part"
  done
}

# fake_dm NAME DM SLAVE: a device-mapper volume (/dev/mapper/NAME -> ../DM) over block SLAVE.
fake_dm() {
  local name=$1 dm=$2 slave=$3 dir=$ROOT/sys/devices/virtual/block/$2
  mkdir -p "$dir/slaves" "$ROOT/dev/mapper"
  ln -sr "$(readlink -f "$ROOT/sys/class/block/$slave")" "$dir/slaves/$slave"
  ln -sr "$dir" "$ROOT/sys/class/block/$dm"
  : >"$ROOT/dev/$dm"
  ln -sr "$ROOT/dev/$dm" "$ROOT/dev/mapper/$name"
}

fake_mount() { printf '%s %s %s rw,relatime 0 0\n' "$1" "$2" "$3" >>"$ROOT/proc/mounts"; }

fake_netdev() {
  local iface=$1 bdf=$2 dir
  dir=$(fake_dev_path "$bdf")/net/$iface
  mkdir -p "$dir"
  ln -sr "$(fake_dev_path "$bdf")" "$dir/device"
  ln -sr "$dir" "$ROOT/sys/class/net/$iface"
}

fake_default_route() {
  printf '%s\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n' "$1" >>"$ROOT/proc/net/route"
}

fake_default_route6() {
  printf '%s 00 %s 00 fe800000000000000000000000000001 00000400 00000002 00000000 00000003 %8s\n' \
    "$(printf '0%.0s' {1..32})" "$(printf '0%.0s' {1..32})" "$1" >>"$ROOT/proc/net/ipv6_route"
}

# fake_open PID COMM NODE: process PID holds /dev/NODE open.
fake_open() {
  mkdir -p "$ROOT/proc/$1/fd"
  printf '%s\n' "$2" >"$ROOT/proc/$1/comm"
  ln -s "/dev/$3" "$ROOT/proc/$1/fd/7"
}

# standard_machine: a workstation with an NVMe data disk, a boot NVMe (LVM root), xHCI, a NIC
# with the default route, and a GPU with its audio function in one IOMMU group. Copied from
# $FAKE_TEMPLATE when that names one built earlier (the links are relative, so a copy works).
standard_machine() {
  if [[ -n ${FAKE_TEMPLATE:-} && -d $FAKE_TEMPLATE ]]; then
    cp -a "$FAKE_TEMPLATE/." "$ROOT/"
  else
    build_standard_machine
  fi
}

build_standard_machine() {
  fake_tree
  fake_driver vfio-pci
  fake_pci 0000:00:00.0 8086:29c0 0x060000 - 0
  fake_pci 0000:00:1c.0 8086:a110 0x060400 pcieport 5
  fake_pci 0000:01:00.0 1b36:0010 0x010802 nvme 5 0000:00:1c.0
  fake_pci 0000:00:14.0 1b36:000d 0x0c0330 xhci_hcd 7
  fake_pci 0000:00:1f.6 8086:10d3 0x020000 e1000e 8
  fake_pci 0000:02:00.0 10de:1b80 0x030000 nouveau 9
  fake_pci 0000:02:00.1 10de:10f0 0x040300 snd_hda_intel 9
  fake_pci 0000:03:00.0 144d:a808 0x010802 nvme 10
  fake_disk 0000:01:00.0 nvme0 nvme0n1
  fake_disk 0000:03:00.0 nvme1 nvme1n1 nvme1n1p1 nvme1n1p2
  fake_dm vg-root dm-0 nvme1n1p2
  fake_mount sysfs /sys sysfs
  fake_mount /dev/mapper/vg-root / ext4
  fake_mount /dev/nvme1n1p1 /boot/efi vfat
  fake_netdev eth0 0000:00:1f.6
  fake_default_route eth0
}
