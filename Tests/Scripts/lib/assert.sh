# shellcheck shell=bash
# Checks shared by Tests/Scripts/run.sh (fake trees) and Tests/HIL/bind-suite.sh (the rig's guest).
# A case is a function that run_case runs in a subshell; a failed check prints its reason on fd 3
# and ends that subshell. Needs REPO (the repository root); TRANSCRIPT, when set, collects every
# command run with `run` and its output.

PASSED=0
FAILED=0

fail() {
  printf '%s\n' "$*" >&3
  exit 1
}

oneline() { tr '\n' '|' <<<"$1"; }

# run SCRIPT ARGS...: runs Scripts/SCRIPT (or a path) with bash; output in $OUT, status in $RC.
run() {
  local script=$1
  shift
  [[ $script == */* ]] || script=$REPO/Scripts/$script
  RC=0
  OUT=$(bash "$script" "$@" 2>&1) || RC=$?
  [[ -z ${TRANSCRIPT:-} ]] || printf '$ %s %s\n%s\n[rc=%s]\n' "${script##*/}" "$*" "$OUT" "$RC" >>"$TRANSCRIPT"
}

expect_rc() { [[ $RC == "$1" ]] || fail "exit status $RC, expected $1; output: $(oneline "$(tail -n 4 <<<"$OUT")")"; }
expect_out() { grep -qF -- "$1" <<<"$OUT" || fail "output lacks '$1'; output: $(oneline "$OUT")"; }
expect_no_out() { ! grep -qF -- "$1" <<<"$OUT" || fail "output has '$1' but should not"; }

# expect_error_line PROG: a "PROG: error: ..." line followed by at least one "  hint: ..." line.
expect_error_line() {
  grep -q "^$1: error: " <<<"$OUT" || fail "no '$1: error:' line; output: $(oneline "$OUT")"
  grep -q '^  hint: ' <<<"$OUT" || fail "no hint line; output: $(oneline "$OUT")"
}

# sysfs_driver BDF: the driver BDF is bound to (in LIMITLESS_SYSFS, default /sys), or nothing.
sysfs_driver() {
  local link=${LIMITLESS_SYSFS:-/sys}/bus/pci/devices/$1/driver
  if [[ -L $link ]]; then basename "$(readlink "$link")"; fi
}

expect_driver() { [[ $(sysfs_driver "$1") == "$2" ]] || fail "$1 is on '$(sysfs_driver "$1")', expected '$2'"; }

# run_case LABEL FUNCTION ARGS...: prints "PASS LABEL" or "FAIL LABEL: why" and counts it.
run_case() {
  local label=$1 why
  shift
  if why=$( ("$@" 3>&1 >/dev/null 2>&1) 2>/dev/null); then
    printf 'PASS %s\n' "$label"
    PASSED=$((PASSED + 1))
  else
    printf 'FAIL %s: %s\n' "$label" "${why:-the case stopped without saying why}"
    FAILED=$((FAILED + 1))
  fi
}

# summary: the closing line; fails when any case failed.
summary() {
  printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
  ((FAILED == 0))
}
