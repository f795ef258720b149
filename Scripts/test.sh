#!/usr/bin/env bash
# Runs every Limitless test and closes with one "N passed, N failed" line:
#   1. unit tests (swift test: platform layer against fake sysfs, a scripted kernel and fake
#      devices; drivers against fake BARs),
#   2. the shell scripts' tests (bind/unbind/install against a fake sysfs),
#   then a bounded fuzz run and HotPathAllocationTests in the optimized build (no retains),
#   3. the hardware-in-the-loop suites in the rig (Scripts/rig.sh test): our release binaries
#      drive emulated NVMe, xHCI and e1000e devices through real VFIO behind an emulated IOMMU.
# Exits non-zero if any test failed or any stage could not run.
set -uo pipefail

usage() {
	cat <<'USAGE'
Usage: Scripts/test.sh [--no-rig] [--only unit|scripts|fuzz|hotpath|rig] [-h|--help]

Runs the unit tests, the script tests, a bounded fuzz run of the IPC decoder and server and of ext2 images (a
million generated inputs; Scripts/fuzz.sh is the long run), HotPathAllocationTests again in the
optimized build (where it also holds the hot paths to no retains) and the rig's hardware-in-the-loop
suites, then prints
"N passed, N failed". Installs the Debian packages the build needs when they are missing
(as root; otherwise it says which to install).

  --no-rig        skip the emulated machine (unit, script, fuzz and hotpath stages only)
  --only STAGE    run one stage: unit, scripts, fuzz, hotpath or rig
USAGE
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P) || exit 2
cd "$repo" || exit 2
stages="unit scripts fuzz hotpath rig"
while (($#)); do
	case $1 in
	--no-rig) stages="unit scripts fuzz hotpath"; shift ;;
	--only) stages=${2:?--only needs a stage}; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; echo "test.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done

say() { echo "test.sh: $*" >&2; }
logs="$repo/.build-test"
mkdir -p "$logs"
total_passed=0
total_failed=0
broken=()

# Adds a stage's counts; a stage that printed no counts is itself a failure.
tally() {
	local stage=$1 passed=$2 failed=$3 status=$4
	total_passed=$((total_passed + passed))
	total_failed=$((total_failed + failed))
	say "$stage: $passed passed, $failed failed (exit $status)"
	if ((status != 0 && failed == 0)); then
		broken+=("$stage (exit $status, see $logs/$stage.log)")
	fi
}

# The build's own Debian packages (the rig installs QEMU and its kernel itself).
ensure_packages() {
	local missing=() package
	for package in libpci-dev libnuma-dev pkg-config pci.ids shellcheck e2fsprogs libfuse3-dev fuse3; do
		dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
	done
	((${#missing[@]} == 0)) && return 0
	if ((EUID != 0)); then
		say "missing packages: ${missing[*]}; install them with: sudo apt-get install ${missing[*]}"
		return 1
	fi
	say "installing ${missing[*]}"
	if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
		>"$logs/apt.log" 2>&1; then
		say "apt-get failed, see $logs/apt.log"
		return 1
	fi
}

# XCTest's totals in LOG as "run failed skipped": its last "Executed N tests, with [K tests
# skipped and] M failures" line is the total over all suites.
xctest_totals() {
	local total run failed skipped
	total=$(grep -E "Executed [0-9]+ tests?, with " "$1" | tail -1)
	run=$(sed -E 's/.*Executed ([0-9]+) tests?,.*/\1/' <<<"$total")
	failed=$(sed -nE 's/.* ([0-9]+) failures? .*/\1/p' <<<"$total")
	skipped=$(sed -nE 's/.*with ([0-9]+) tests? skipped.*/\1/p' <<<"$total")
	echo "${run:-0} ${failed:-0} ${skipped:-0}"
}

run_unit() {
	say "unit tests (swift test: XCTest and Swift Testing)"
	local log="$logs/unit.log" status xc_run xc_failed xc_skipped st_run st_failed
	swift build --build-tests >"$log" 2>&1 || { tail -40 "$log" >&2; tally unit 0 0 1; return; }
	swift test --skip-build 2>&1 | tee -a "$log" | grep -E "^(Test Case .*failed|.*error:|✘ Test .*failed|	 Executed .* tests|✔ Test run|✘ Test run)" >&2
	status=${PIPESTATUS[0]}
	# XCTest's totals. A skipped test (a missing tool, a demo helper) did not pass.
	read -r xc_run xc_failed xc_skipped < <(xctest_totals "$log")
	# Swift Testing: "Test run with N tests ... passed/failed"; each failed test has a "✘ Test ... failed" line.
	st_run=$(grep -E "Test run with [0-9]+ tests?" "$log" | tail -1 | sed -E 's/.*Test run with ([0-9]+) tests?.*/\1/')
	st_failed=$(grep -E "^✘ Test .* failed after" "$log" | grep -vc "^✘ Test run")
	xc_run=${xc_run:-0} xc_failed=${xc_failed:-0} st_run=${st_run:-0} xc_skipped=${xc_skipped:-0}
	((xc_run + st_run > 0)) || status=1
	((xc_skipped == 0)) || say "unit: $xc_skipped XCTest(s) skipped (not counted as passed)"
	tally unit $((xc_run - xc_skipped - xc_failed + st_run - st_failed)) $((xc_failed + st_failed)) "$status"
}

# Reads the last "N passed, N failed" line of a log.
counts_of() {
	grep -E "^(\w+: )?[0-9]+ passed, [0-9]+ failed" "$1" | tail -1 | sed -E 's/^(\w+: )?([0-9]+) passed, ([0-9]+) failed.*/\2 \3/'
}

run_scripts() {
	say "script tests (Tests/Scripts/run.sh)"
	local log="$logs/scripts.log" status passed failed
	bash Tests/Scripts/run.sh >"$log" 2>&1
	status=$?
	grep -E "^FAIL" "$log" >&2
	read -r passed failed < <(counts_of "$log")
	tally scripts "${passed:-0}" "${failed:-0}" "$status"
	[[ -n ${passed:-} ]] || broken+=("scripts (no summary line)")
}

# The release build the fuzzer, the hot-path test and the rig run (incremental). Built with
# -enable-testing, which the release test build needs (the test targets use @testable imports):
# with the same flags for all three the modules are compiled once, not twice.
release_flags=(-c release -Xswiftc -enable-testing)
build_release() {
	say "release build"
	swift build "${release_flags[@]}" "$@" >"$logs/release-build.log" 2>&1 && return 0
	tail -40 "$logs/release-build.log" >&2
	return 1
}

run_fuzz() {
	build_release || { tally fuzz 0 0 1; return; }
	say "fuzz: limitless-fuzz decoder (1,000,000 inputs), server (200,000 datagrams), ext2 (5,000 damaged images)"
	local passed=0 failed=0 mode
	for mode in "decoder --iterations 1000000" "server --count 200000" "ext2 --iterations 5000"; do
		# shellcheck disable=SC2086 # the mode is two words on purpose
		if .build/release/limitless-fuzz $mode >"$logs/fuzz.log" 2>&1 && grep -q "violations: 0" "$logs/fuzz.log"; then
			passed=$((passed + 1))
			grep -E "^(inputs|datagrams|after|iterations|mounted|operations):" "$logs/fuzz.log" | sed "s/^/  ${mode%% *}: /" >&2
		else
			failed=$((failed + 1))
			tail -20 "$logs/fuzz.log" >&2
		fi
	done
	tally fuzz "$passed" "$failed" 0
}

# HotPathAllocationTests in the optimized build: there it also asserts that the IPC socket and
# ring paths and the storage message path retain nothing per operation (the debug build retains in
# code the optimizer removes). Counted like the unit stage's XCTest totals.
run_hotpath() {
	build_release --build-tests || { tally hotpath 0 0 1; return; }
	say "hot paths in the optimized build (swift test ${release_flags[*]} --filter HotPathAllocationTests)"
	local log="$logs/hotpath.log" status run failed skipped
	swift test "${release_flags[@]}" --skip-build --filter HotPathAllocationTests >"$log" 2>&1
	status=$?
	grep -E "^(alloc |Test Case .*failed|.*error:)" "$log" >&2
	read -r run failed skipped < <(xctest_totals "$log")
	((run > 0)) || status=1
	((skipped == 0)) || say "hotpath: $skipped test(s) skipped (not counted as passed)"
	tally hotpath $((run - skipped - failed)) "$failed" "$status"
}

run_rig() {
	build_release || { tally rig 0 0 1; return; }
	local log="$logs/rig.log" status passed failed
	say "hardware-in-the-loop suites (Scripts/rig.sh test)"
	# Already built just above: the rig need not build again.
	RIG_BUILD=0 Scripts/rig.sh test 2>&1 | tee "$log"
	status=${PIPESTATUS[0]}
	read -r passed failed < <(counts_of "$log")
	tally rig "${passed:-0}" "${failed:-0}" "$status"
	[[ -n ${passed:-} ]] || broken+=("rig (no summary line)")
}

ensure_packages || broken+=("packages")
for stage in $stages; do
	case $stage in
	unit) run_unit ;;
	scripts) run_scripts ;;
	fuzz) run_fuzz ;;
	hotpath) run_hotpath ;;
	rig) run_rig ;;
	*) say "unknown stage $stage"; exit 2 ;;
	esac
done

for item in "${broken[@]}"; do say "stage failed without a test failure: $item"; done
echo "$total_passed passed, $total_failed failed"
((total_failed == 0 && ${#broken[@]} == 0))
