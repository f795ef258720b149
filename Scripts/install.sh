#!/usr/bin/env bash
# install.sh: install Limitless's release binaries (and with --udev its udev rules) into the
# LimitlessOS layout. See --help.
set -euo pipefail

PROG=install.sh
REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)

PREFIX=/system
DESTDIR=""
BUILD_DIR=$REPO/.build/release
UDEV=0
DRY_RUN=0

# Where each binary goes, relative to PREFIX.
LAYOUT=(
  "servers/drivers storage_server"
  "servers/drivers usb_server"
  "servers/fs vfs_server"
  "servers/services power_mgmt_daemon"
  "servers/services limitless-supervisor"
  "bin serverctl"
  "bin limitless-fs"
  "bin limitless-bench"
  "bin limitless-hil"
)

# udev files: source in the repo, destination, mode.
UDEV_FILES=(
  "udev/70-limitless-vfio.rules /etc/udev/rules.d/70-limitless-vfio.rules 0644"
  "udev/limitless-bind-at-boot /usr/lib/limitless/limitless-bind-at-boot 0755"
  "udev/vfio-devices.conf.example /etc/limitless/vfio-devices.conf.example 0644"
)
UDEV_CONF=/etc/limitless/vfio-devices.conf

usage() {
  cat <<EOF
Usage: sudo ./Scripts/install.sh [--prefix PREFIX] [--udev] [--dry-run] [--destdir DIR] [--build-dir DIR]

Installs the release binaries built by 'swift build -c release' from .build/release/:
  PREFIX/servers/drivers/   storage_server, usb_server
  PREFIX/servers/fs/        vfs_server
  PREFIX/servers/services/  power_mgmt_daemon, limitless-supervisor
  PREFIX/bin/               serverctl, limitless-fs, limitless-bench, limitless-hil
Binaries that were not built are skipped, and named.

Options:
  --prefix PREFIX   install root of the layout (default /system)
  --udev            also install the udev rules and boot-time helper:
                      /etc/udev/rules.d/70-limitless-vfio.rules
                      /usr/lib/limitless/limitless-bind-at-boot
                      /etc/limitless/vfio-devices.conf.example (and vfio-devices.conf if absent)
  --destdir DIR     prepend DIR to every destination (staging or packaging); udev is not reloaded
  --build-dir DIR   take binaries from DIR instead of .build/release
  --dry-run         print what would be installed; changes nothing
  --help            this text
EOF
}

die() {
  printf '%s: error: %s\n' "$PROG" "$1" >&2
  shift
  local hint
  for hint in "$@"; do printf '  hint: %s\n' "$hint" >&2; done
  exit 1
}

usage_error() {
  printf '%s: error: %s\n  hint: see %s --help\n' "$PROG" "$1" "$PROG" >&2
  exit 2
}

parse_args() {
  while (($#)); do
    case $1 in
      --help | -h) usage; exit 0 ;;
      --prefix | --destdir | --build-dir)
        if (($# < 2)) || [[ -z $2 ]]; then usage_error "$1 needs a directory"; fi
        case $1 in
          --prefix) PREFIX=$2 ;;
          --destdir) DESTDIR=$2 ;;
          --build-dir) BUILD_DIR=$2 ;;
        esac
        shift
        ;;
      --prefix=* | --destdir=* | --build-dir=*) parse_args "${1%%=*}" "${1#*=}" ;;
      --udev) UDEV=1 ;;
      --dry-run) DRY_RUN=1 ;;
      *) usage_error "unknown argument '$1'" ;;
    esac
    shift
  done
  [[ $PREFIX == /* ]] || usage_error "--prefix must be an absolute path (got '$PREFIX')"
}

# put SOURCE DEST MODE: one file, creating directories; dies with a hint when it cannot.
put() {
  local source=$1 dest=$2 mode=$3 err
  if ((DRY_RUN)); then
    printf '  would install %s -> %s\n' "$source" "$dest"
    return 0
  fi
  err=$(install -D -m "$mode" -- "$source" "$dest" 2>&1) ||
    die "could not install $dest: ${err##*: }" \
      "run it as root (sudo), or install elsewhere with --prefix DIR or --destdir DIR"
  printf '  installed %s\n' "$dest"
}

install_binaries() {
  local entry dir name
  local -a installed=() skipped=()
  for entry in "${LAYOUT[@]}"; do
    read -r dir name <<<"$entry"
    if [[ -f $BUILD_DIR/$name && -x $BUILD_DIR/$name ]]; then
      put "$BUILD_DIR/$name" "$DESTDIR$PREFIX/$dir/$name" 0755
      installed+=("$name")
    else
      skipped+=("$name")
    fi
  done
  if ((${#installed[@]} == 0)) && ! ((UDEV)); then
    die "no Limitless binaries in $BUILD_DIR" \
      "build them first: swift build -c release (or point --build-dir at them)"
  fi
  ((${#skipped[@]} == 0)) || printf 'skipped (not built in %s): %s\n' "$BUILD_DIR" "${skipped[*]}"
  printf '%d of %d binaries %s under %s\n' "${#installed[@]}" "${#LAYOUT[@]}" \
    "$( ((DRY_RUN)) && echo 'would be installed' || echo installed)" "$DESTDIR$PREFIX"
}

install_udev() {
  local entry source dest mode
  for entry in "${UDEV_FILES[@]}"; do
    read -r source dest mode <<<"$entry"
    put "$REPO/$source" "$DESTDIR$dest" "$mode"
  done
  if [[ -e $DESTDIR$UDEV_CONF ]]; then
    printf '  kept your %s\n' "$DESTDIR$UDEV_CONF"
  else
    put "$REPO/udev/vfio-devices.conf.example" "$DESTDIR$UDEV_CONF" 0644
  fi
  reload_udev
  cat <<EOF
udev: list the devices to bind at boot in $UDEV_CONF, then apply now with
      sudo udevadm trigger --action=add --subsystem-match=pci   (see udev/README.md)
EOF
}

reload_udev() {
  [[ -z $DESTDIR ]] && ! ((DRY_RUN)) || return 0
  if command -v udevadm >/dev/null 2>&1 && udevadm control --reload 2>/dev/null; then
    printf '  reloaded the udev rules (udevadm control --reload)\n'
  else
    printf '  udev not reloaded (no running udevd); the rules apply from the next boot\n'
  fi
}

main() {
  parse_args "$@"
  ((DRY_RUN)) && printf 'dry run: nothing is changed\n'
  install_binaries
  ((UDEV)) && install_udev
  return 0
}

main "$@"
