# shellcheck shell=bash
# Scripts/lib/wait.sh: polling for what the kernel or a server does asynchronously, shared by
# Scripts/lib/pci.sh (bind.sh, unbind.sh) and the rig's suites (Tests/HIL/lib.sh).

# wait_until SECONDS COMMAND...: polls COMMAND every 0.1 s; fails once SECONDS have passed.
wait_until() {
  local tries=$(($1 * 10))
  shift
  until "$@"; do
    ((tries-- > 0)) || return 1
    sleep 0.1
  done
}
