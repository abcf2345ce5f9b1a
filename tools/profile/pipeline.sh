#!/usr/bin/env bash
# Profiles the whole machine while the benchmark's three-stage pipeline drains its backlog
# (`make profile`), and draws the flame graph docs/benchmarks.md shows:
#   1. runs `orderpipe-bench PROFILE_BENCH_FLAGS` (release build; `--only pipeline` unless set) on
#      its private broker, which writes its report where `make bench` does
#      (bench/results/latest.md); `--only worker` drains the pipeline after the side-by-side runs,
#      as the report does, when the broker no longer spends a tenth of the machine compiling;
#   2. once the timed drain has started (the first "of N delivered" after the timed backlog is
#      produced), notes which process is which (validate, status, notify, broker, bench) and
#      samples every CPU with call stacks (`perf record -a --call-graph dwarf`) for
#      PROFILE_SECONDS;
#   3. folds the stacks with inferno (pinned, installed with cargo into the tool cache), names each
#      stack's process by its role, and writes PROFILE_OUT (an SVG; frames under 1 pixel left out,
#      which keeps it small enough to commit).
# Needs perf (Debian: linux-perf) and the right to sample every CPU (root, or
# kernel.perf_event_paranoid <= -1). Not part of CI: it measures this machine, it tests nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

INFERNO_VERSION=0.12.3
seconds="${PROFILE_SECONDS:-10}"
read -r -a bench_flags <<<"${PROFILE_BENCH_FLAGS:---only pipeline}"
out="${PROFILE_OUT:-docs/profiles/pipeline-drain.svg}"
target="${CARGO_TARGET_DIR:-target}"
report=bench/results/latest.md
tools="${ORDERPIPE_CACHE:-${HOME}/.cache/orderpipe}/tools/inferno-${INFERNO_VERSION}"
work="$(mktemp -d "${TMPDIR:-/tmp}/orderpipe-profile.XXXXXX")"
step() { printf '[profile] %s\n' "$*" >&2; }

command -v perf >/dev/null || {
	step "perf is missing (Debian: apt-get install linux-perf)"
	exit 2
}
if [[ ! -x "${tools}/bin/inferno-flamegraph" ]]; then
	step "installing inferno ${INFERNO_VERSION} into ${tools}"
	cargo install inferno --locked --version "${INFERNO_VERSION}" --root "${tools}" >&2
fi

step "running the pipeline benchmark (log: ${work}/bench.log)"
"${target}/release/orderpipe-bench" "${bench_flags[@]}" --out "${report}" >"${work}/bench.log" 2>&1 &
bench=$!
trap 'kill "${bench}" 2>/dev/null || true' EXIT

# The timed backlog is the last "producing N orders" before the drain; its first progress line
# means the three workers are draining it.
until awk '/pipeline: producing 1000000 orders/ { timed = 1 } timed && /of [0-9]+ delivered/ { found = 1 }
	END { exit !found }' "${work}/bench.log"; do
	kill -0 "${bench}" 2>/dev/null || {
		step "the benchmark stopped before its drain; its log:"
		cat "${work}/bench.log" >&2
		exit 1
	}
	sleep 0.5
done

# Which process is which: workers by their ORDERPIPE_STAGE, the bench, and the broker's JVM.
for proc in /proc/[0-9]*; do
	cmdline="$(tr '\0' ' ' 2>/dev/null <"${proc}/cmdline")" || continue
	role=""
	case "${cmdline}" in
	*orderpipe-worker*) role="$(tr '\0' '\n' 2>/dev/null <"${proc}/environ" | sed -n 's/^ORDERPIPE_STAGE=//p')" ;;
	*orderpipe-bench*) role=bench ;;
	*kafka.Kafka*) role=broker ;;
	esac
	[[ -n ${role} ]] && printf '%s %s\n' "${proc#/proc/}" "${role}"
done >"${work}/roles"
step "sampling every CPU for ${seconds} s of the drain: $(tr '\n' ' ' <"${work}/roles")"
perf record -a --call-graph dwarf,8192 -F 99 -o "${work}/perf.data" -- sleep "${seconds}" 2>"${work}/perf.log" >&2

step "waiting for the benchmark to finish"
wait "${bench}"
trap - EXIT
grep -F 'backlog of 1000000 orders' "${report}" >&2 || true

step "folding the stacks"
mkdir -p "$(dirname "${out}")"
folded="${work}/stacks.folded"
# inferno names a stack's first frame "thread-pid"; it becomes "role;thread".
perf script -F +pid -i "${work}/perf.data" 2>/dev/null |
	"${tools}/bin/inferno-collapse-perf" --pid |
	awk 'NR == FNR { role[$1] = $2; next }
		{
			split($0, frames, ";"); first = frames[1]; pid = first; sub(/.*-/, "", pid)
			thread = first; sub(/-[^-]*$/, "", thread)
			name = (pid in role) ? role[pid] : "other"
			print name ";" thread substr($0, length(first) + 1)
		}' "${work}/roles" - >"${folded}"
"${tools}/bin/inferno-flamegraph" \
	--title "Whole pipeline draining its backlog, every CPU, ${seconds} s ($(git rev-parse --short HEAD))" \
	--subtitle "orderpipe-bench ${bench_flags[*]}; perf record -a --call-graph dwarf -F 99" \
	--countname samples --minwidth 1 <"${folded}" >"${out}"
step "wrote ${out}; share of the samples by process:"
awk '{ split($1, frames, ";"); n[frames[1]] += $NF; total += $NF }
	END { for (p in n) printf "  %-9s %5.1f %%\n", p, 100 * n[p] / total }' "${folded}" | sort -k2 -nr >&2
rm -rf "${work}"
