#!/usr/bin/env bash
# Tests/HIL/uio-suite.sh: the UIO backend (uio_pci_generic) against a real or emulated NVMe
# controller: INTx interrupts through /dev/uioN, BARs through sysfs resource files, DMA to
# physical addresses from /proc/self/pagemap (huge pages keep them contiguous). In the rig:
#   Scripts/rig.sh test uio
# The guest boots with iommu=pt so a device outside VFIO DMAs to physical addresses, as it would
# on a machine without an IOMMU. On real hardware: sudo bash Tests/HIL/uio-suite.sh BDF
# Binds BDF to uio_pci_generic, runs `limitless-hil smoke --backend uio`, and binds it back to
# vfio-pci. Ends with one "N passed, N failed" line; exit 1 on any failure.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
# shellcheck source=Tests/HIL/lib.sh
source Tests/HIL/lib.sh

device=${1:-0000:00:03.0}
bin=.build/release
hil=$bin/limitless-hil

require_built "$bin" limitless-hil

Scripts/bind.sh --uio "$device" >/tmp/uio-bind.log 2>&1
status=$?
result $status "$device: bound to uio_pci_generic ($(grep -o '/dev/uio[0-9]*' /tmp/uio-bind.log | head -1))"
if ((status != 0)); then cat /tmp/uio-bind.log; fi

if ((status == 0)); then
	"$hil" smoke --backend uio --device "$device" ${RIG_NVME_SERIAL:+--nvme-serial "$RIG_NVME_SERIAL"} >/tmp/uio-smoke.log 2>&1
	smoke_status=$?
	grep -E '^(PASS|FAIL|SKIP|     )' /tmp/uio-smoke.log
	read -r p f < <(grep -E '^[0-9]+ passed, [0-9]+ failed' /tmp/uio-smoke.log | tail -1 | sed -E 's/([0-9]+) passed, ([0-9]+) failed.*/\1 \2/')
	if [[ -z ${p:-} ]]; then
		tail -20 /tmp/uio-smoke.log
		result 1 "limitless-hil smoke --backend uio printed no summary (exit $smoke_status)"
	else
		passed=$((passed + p))
		failed=$((failed + f))
	fi
fi

Scripts/bind.sh "$device" >/tmp/uio-rebind.log 2>&1
status=$?
result $status "$device: bound back to vfio-pci"
((status == 0)) || cat /tmp/uio-rebind.log
finish
