#!/bin/bash
# Limitless rig, inside the guest: bind the profile's PCI devices to their drivers and write the
# device list. Run by the guest init at boot and by the test job between suites (--quiet: print
# only what had to be changed). Needs RIG_BIND_IDS, RIG_RUN_DIR (from "$RIG_ENV").
#
# RIG_BIND_IDS entries: VENDOR:DEVICE (bound to vfio-pci) or VENDOR:DEVICE=DRIVER, where DRIVER is
# vfio-pci, uio_pci_generic, any loaded kernel PCI driver, or "none" (left without a driver).
# A full BDF (0000:00:06.0 or 0000:00:06.0=nvme) may stand for VENDOR:DEVICE and wins over it.
#
# Device list, one line per bound device, written to /run/limitless-rig/devices and
# $RIG_RUN_DIR/devices:   BDF VENDOR:DEVICE DRIVER NODE
#   e.g.  0000:00:03.0 1b36:0010 vfio-pci /dev/vfio/4
# NODE is /dev/vfio/GROUP for vfio-pci, /dev/uioN for uio_pci_generic, - otherwise.
set -u
# shellcheck source=/dev/null
[[ -n ${RIG_ENV:-} && -r $RIG_ENV ]] && . "$RIG_ENV"

quiet=0
[[ ${1:-} == --quiet ]] && quiet=1
say() { echo "rig: $*"; }

# Fork-free helpers (a fork or exec costs tens of milliseconds in the TCG guest).
wanted_driver() { # BDF ID -> $want: driver name, or empty when RIG_BIND_IDS lists neither
	local entry key
	want=""
	# A BDF entry wins over a VENDOR:DEVICE one: two identical controllers (same ID) can go to
	# different drivers, e.g. one to vfio-pci for us and one to the kernel's nvme for fio.
	for key in "$1" "$2"; do
		for entry in ${RIG_BIND_IDS:-}; do
			case $entry in
			"$key") want=vfio-pci; return ;;
			"$key="*) want=${entry#*=}; return ;;
			esac
		done
	done
}

link_name() { # PATH -> $link: last component of the symlink's target, or empty
	link=""
	[[ -e $1 ]] || return 0
	cd -P "$1" 2>/dev/null && link=${PWD##*/}
	cd / || return 0
}

list=()
errors=0
seen=""
for dev in /sys/bus/pci/devices/*; do
	bdf=${dev##*/}
	read -r vendor <"$dev/vendor"
	read -r device <"$dev/device"
	id="${vendor#0x}:${device#0x}"
	wanted_driver "$bdf" "$id"
	[[ -n $want ]] || continue
	seen+=" $id $bdf"
	link_name "$dev/driver"
	cur=$link
	changed=0
	if [[ $want == none ]]; then
		if [[ -n $cur ]]; then
			echo "$bdf" >"$dev/driver/unbind"
			changed=1
		fi
		echo none >"$dev/driver_override"
	elif [[ $cur != "$want" ]]; then
		[[ -n $cur ]] && echo "$bdf" >"$dev/driver/unbind"
		echo "$want" >"$dev/driver_override"
		echo "$bdf" >/sys/bus/pci/drivers_probe 2>/dev/null
		changed=1
	fi
	link_name "$dev/driver"
	cur=$link
	node=-
	detail=""
	if [[ $want != none && $cur != "$want" ]]; then
		say "error: $bdf $id: binding to $want failed (driver now: ${cur:-none}; is the module loaded?)"
		errors=$((errors + 1))
	fi
	case $cur in
	vfio-pci)
		link_name "$dev/iommu_group"
		group=$link
		node=/dev/vfio/$group
		detail=" group $group"
		if [[ ! -c $node ]]; then
			say "error: $bdf $id: $node missing after binding to vfio-pci"
			errors=$((errors + 1))
		fi
		;;
	uio_pci_generic)
		for u in "$dev"/uio/uio*; do
			[[ -e $u ]] && node=/dev/${u##*/}
		done
		detail=" ${node#/dev/}"
		;;
	esac
	if ((changed || !quiet)); then
		say "$bdf $id -> ${cur:-no driver}$detail"
	fi
	list+=("$bdf $id ${cur:--} $node")
done

for entry in ${RIG_BIND_IDS:-}; do
	id=${entry%%=*}
	case " $seen " in
	*" $id "*) ;;
	*)
		say "error: no PCI device $id in the guest (RIG_BIND_IDS lists it)"
		errors=$((errors + 1))
		;;
	esac
done

[[ -d /run/limitless-rig ]] || mkdir -p /run/limitless-rig
{
	echo "# bdf vendor:device driver node"
	((${#list[@]})) && printf '%s\n' "${list[@]}"
} >/run/limitless-rig/devices
if [[ -n ${RIG_RUN_DIR:-} && -d $RIG_RUN_DIR ]]; then
	while IFS= read -r line; do echo "$line"; done </run/limitless-rig/devices >"$RIG_RUN_DIR/devices"
	if ((errors)); then echo "$errors" >"$RIG_RUN_DIR/bind-errors"; fi
fi
((errors == 0))
