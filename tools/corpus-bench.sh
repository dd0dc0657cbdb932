#!/usr/bin/env bash
# corpus-bench.sh -- cairn, restic and borg on the multi-VM corpus of corpus.sh, three nights.
#
#   tools/corpus-bench.sh [--corpus /tmp/cairn-corpus] [--size-gib 4] [--workdir /tmp/cairn-corpus-bench]
#                         [--out corpus-results.md] [--tools cairn,restic,borg] [--no-build]
#                         [--cairn-bin PATH] [--restore-vm web] [--quiet-wait SECS] [--keep]
#                         [--runs N]
#
# If --corpus has no gen3/ yet, corpus.sh --size-gib N builds it first.
# Per tool, in a fresh repository (one tool at a time, the repository removed after it, so
# only one is on disk at once):
#   night 1, 2, 3: the four VMs' disks of that generation, each at a fixed path
#       (WORKDIR/vms/VM/disk0.img, a hard link to the corpus image of the night), backed up
#       one snapshot (archive) per VM: cairn backup --vm VM --time T; restic backup --host VM
#       --time T; borg create ::VM-nightN (lz4, as in BENCHMARKS.md A). Each backup under GNU
#       time: wall, user+sys CPU, peak RSS; du -sb of the repository after each night.
#   prune to the last night: cairn forget --keep-last 1 --group-by vm --prune --exclusive;
#       restic forget --keep-last 1 --prune (groups by host and path = per VM);
#       borg prune --keep-last 1 -a 'VM-*' per VM, then borg compact. Repository size after.
#   restore of one VM's disk (--restore-vm, latest night), checked with cmp against the image.
# --runs N (default 1) repeats every tool's whole sequence N times, each in a fresh
# repository, taking turns (cairn, restic, borg, cairn, ...); the table shows the median
# of the runs for times (per night: the median of the runs' sums) and run 1 for sizes.
# The floor: tools/floor.py over the 12 images in backup order (unique non-zero 4 KiB
# blocks, zstd -3 as one stream, cumulative after each image) and over the night-3 images
# alone (the floor after prune to the last night).
# Page cache: not dropped; every night's images are read with cat before each tool's backups.
# Other processes: before each tool the script waits up to --quiet-wait s (default 60) for
# an idle machine; every step records "other CPU" (busy CPU of the whole machine minus the
# step's own): far above 0 means the step shared the 2 cores and its wall time is pessimistic.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

CORPUS=/tmp/cairn-corpus
SIZE_GIB=4
WORKDIR=/tmp/cairn-corpus-bench
OUT=corpus-results.md
TOOLS=cairn,restic,borg
BUILD=1
CAIRN_BIN=
RESTORE_VM=web
QUIET_WAIT=60
KEEP=0
RUNS=1
VMS="web db win app"
NIGHTS=3

usage() { sed -n '2,31p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --corpus) CORPUS=$2; shift 2 ;;
        --size-gib) SIZE_GIB=$2; shift 2 ;;
        --workdir) WORKDIR=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --tools) TOOLS=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --cairn-bin) CAIRN_BIN=$2; BUILD=0; shift 2 ;;
        --restore-vm) RESTORE_VM=$2; shift 2 ;;
        --quiet-wait) QUIET_WAIT=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --runs) RUNS=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "corpus-bench: unknown argument $1" >&2; usage 2 ;;
    esac
done
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
case $WORKDIR in /*) ;; *) WORKDIR=$PWD/$WORKDIR ;; esac
case $CORPUS in /*) ;; *) CORPUS=$PWD/$CORPUS ;; esac
WORKDIR=${WORKDIR%/}
[[ " $VMS " == *" $RESTORE_VM "* ]] || { echo "corpus-bench: --restore-vm must be one of $VMS" >&2; exit 2; }

BENCH_NAME=corpus-bench
# shellcheck source=tools/bench-lib.sh
source "$HERE/bench-lib.sh"   # phase, info, die, logcmd, run, busy_ticks, wait_quiet, prepare_cairn
have_tool() { [[ ",$TOOLS," == *",$1,"* ]]; }

for t in python3 du cmp; do command -v "$t" >/dev/null || die "$t not found"; done
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) not found: apt-get install time"
python3 -c 'import zstandard' 2>/dev/null || die "the floor needs python3's zstandard module: pip install zstandard"

[[ -n $WORKDIR && $WORKDIR != / && $WORKDIR != "$HOME" && $WORKDIR != "$ROOT" && $WORKDIR != "$CORPUS" ]] ||
    die "refusing to use $WORKDIR as workdir"
if [[ -e $WORKDIR ]]; then
    if [[ -n $(ls -A "$WORKDIR") && ! -e $WORKDIR/.cairn-corpus-bench ]]; then
        die "$WORKDIR is not empty and was not made by corpus-bench.sh"
    fi
    rm -rf -- "$WORKDIR"
fi
mkdir -p "$WORKDIR"/{repo,cache,logs,restore,vms}
touch "$WORKDIR/.cairn-corpus-bench"
LOGS=$WORKDIR/logs
CMDS=$WORKDIR/commands.txt
ROWS=$WORKDIR/rows.tsv      # tool step night vm wall cpu rss_kib other_cpu repo_bytes note run
: >"$ROWS"; : >"$CMDS"

export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$WORKDIR/repo/restic RESTIC_CACHE_DIR=$WORKDIR/cache/restic
export BORG_PASSPHRASE=bench BORG_REPO=$WORKDIR/repo/borg BORG_BASE_DIR=$WORKDIR/cache/borg-base
export BORG_CACHE_DIR=$WORKDIR/cache/borg BORG_DISPLAY_PASSPHRASE=no BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export CAIRN_PASSWORD=bench CAIRN_REPOSITORY=$WORKDIR/repo/cairn CAIRN_CACHE_DIR=$WORKDIR/cache/cairn
unset CAIRN_PASSWORD_FILE || true
cat >>"$CMDS" <<EOF
# environment (all caches under the workdir)
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$RESTIC_REPOSITORY RESTIC_CACHE_DIR=$RESTIC_CACHE_DIR
export BORG_PASSPHRASE=bench BORG_REPO=$BORG_REPO BORG_BASE_DIR=$BORG_BASE_DIR BORG_CACHE_DIR=$BORG_CACHE_DIR
export CAIRN_PASSWORD=bench CAIRN_REPOSITORY=$CAIRN_REPOSITORY CAIRN_CACHE_DIR=$CAIRN_CACHE_DIR
EOF

# ------------------------------------------------------------ corpus
if [[ ! -e $CORPUS/gen$NIGHTS/app.img ]]; then
    phase "building the corpus (corpus.sh --size-gib $SIZE_GIB)"
    logcmd "$HERE/corpus.sh" --size-gib "$SIZE_GIB" --workdir "$CORPUS"
    "$HERE/corpus.sh" --size-gib "$SIZE_GIB" --workdir "$CORPUS" | tee "$LOGS/corpus.out"
fi
for ((n = 1; n <= NIGHTS; n++)); do
    for vm in $VMS; do [[ -f $CORPUS/gen$n/$vm.img ]] || die "$CORPUS/gen$n/$vm.img missing"; done
done
img_bytes() { stat -c %s "$1"; }
img_alloc() { echo $(( $(stat -c %b "$1") * $(stat -c %B "$1") )); }

# ------------------------------------------------------------ tools
if have_tool cairn; then prepare_cairn; fi
for t in restic borg; do
    if have_tool $t && ! command -v $t >/dev/null; then info "$t not installed: skipping it"; TOOLS=${TOOLS//$t/}; fi
done

# measure NAME TOOL STEP NIGHT VM -- CMD...: run under GNU time, record a row
measure() {
    local name=$1 tool=$2 step=$3 night=$4 vm=$5; shift 5
    [[ $1 == -- ]] && shift
    logcmd "$@"
    local tf=$LOGS/$name.time b0 b1 wall user sys rss cpu other repo
    b0=$(busy_ticks)
    if ! /usr/bin/time -f '%e %U %S %M' -o "$tf" -- "$@" </dev/null >"$LOGS/$name.out" 2>"$LOGS/$name.err"; then
        echo "corpus-bench: command failed: $*" >&2
        tail -n 20 "$LOGS/$name.err" >&2 || true
        exit 1
    fi
    b1=$(busy_ticks)
    read -r wall user sys rss < <(tail -n1 "$tf")
    cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN{printf "%.2f", u+s}')
    other=$(awk -v d=$((b1 - b0)) -v hz="$HZ" -v c="$cpu" 'BEGIN{o = d/hz - c; printf "%.1f", (o < 0 ? 0 : o)}')
    repo=$(du -sb "$WORKDIR/repo/$tool" | cut -f1)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\t%s\n' "$tool" "$step" "$night" "$vm" "$wall" "$cpu" "$rss" \
        "$other" "$repo" "$RUN" >>"$ROWS"
    info "run $RUN: $tool $step night $night $vm: wall ${wall}s cpu ${cpu}s rss $((rss / 1024))MiB repo $((repo / 1048576))MiB other-cpu ${other}s"
}
note() {   # append a note to the last row
    [[ -n $* ]] || return 0
    awk -F'\t' -v OFS='\t' -v n="$*" '{ l[NR] = $0 } END { for (i = 1; i < NR; i++) print l[i];
        split(l[NR], f, "\t"); f[10] = (f[10] == "" ? n : f[10] "; " n);
        s = f[1]; for (i = 2; i <= 11; i++) s = s OFS f[i]; print s }' "$ROWS" >"$ROWS.tmp" && mv "$ROWS.tmp" "$ROWS"
}

# place_night N: every VM's disk at its fixed path = the corpus image of night N (new inode,
# new mtime: every tool must read it all), page cache warmed
place_night() {
    local n=$1 vm
    for vm in $VMS; do
        mkdir -p "$WORKDIR/vms/$vm"
        ln -f "$CORPUS/gen$n/$vm.img" "$WORKDIR/vms/$vm/disk0.img"
        cat "$WORKDIR/vms/$vm/disk0.img" >/dev/null
    done
    logcmd ln -f "$CORPUS/gen$n/VM.img" "$WORKDIR/vms/VM/disk0.img" "# for VM in $VMS"
}
night_time() { printf '2026-01-%02dT01:00:00Z' "$(( 14 + $1 ))"; }

verify_restore() {   # verify_restore DIR: the one disk file under DIR equals the last image
    local dir=$1 f
    f=$(find "$dir" -type f -name 'disk0.img*' | head -n1)
    [[ -n $f ]] || f=$(find "$dir" -type f | head -n1)
    if [[ -z $f ]]; then note "restore: NO FILE"; return; fi
    if cmp -s "$f" "$CORPUS/gen$NIGHTS/$RESTORE_VM.img"; then
        note "cmp ok, $(( $(img_alloc "$f") / 1048576 )) MiB allocated"
    else
        note "restore MISMATCH"; echo "corpus-bench: WARNING: restored $f differs" >&2
    fi
    rm -rf -- "$dir"
}

run_cairn() {
    phase "cairn"
    run cairn-init "$CAIRN_BIN" init
    local n vm
    for ((n = 1; n <= NIGHTS; n++)); do
        place_night "$n"
        for vm in $VMS; do
            measure "cairn-n$n-$vm" cairn backup "$n" "$vm" -- "$CAIRN_BIN" backup --vm "$vm" \
                --time "$(night_time "$n")" --json "$WORKDIR/vms/$vm/disk0.img"
        done
    done
    measure cairn-prune cairn prune "$NIGHTS" all -- "$CAIRN_BIN" forget --keep-last 1 --group-by vm --prune --exclusive
    local dir=$WORKDIR/restore/cairn; rm -rf "$dir"; mkdir -p "$dir"
    measure cairn-restore cairn restore "$NIGHTS" "$RESTORE_VM" -- "$CAIRN_BIN" restore "$RESTORE_VM:latest" --target "$dir"
    verify_restore "$dir"
}

run_restic() {
    phase "restic ($(restic version | head -n1))"
    run restic-init restic init
    local n vm
    for ((n = 1; n <= NIGHTS; n++)); do
        place_night "$n"
        for vm in $VMS; do
            measure "restic-n$n-$vm" restic backup "$n" "$vm" -- restic backup --host "$vm" \
                --time "$(night_time "$n" | sed 's/T/ /; s/Z$//')" "$WORKDIR/vms/$vm/disk0.img"
        done
    done
    measure restic-prune restic prune "$NIGHTS" all -- restic forget --keep-last 1 --prune
    local dir=$WORKDIR/restore/restic; rm -rf "$dir"; mkdir -p "$dir"
    measure restic-restore restic restore "$NIGHTS" "$RESTORE_VM" -- restic restore latest --host "$RESTORE_VM" --target "$dir"
    verify_restore "$dir"
}

BORG_ENC=
run_borg() {
    phase "borg ($(borg --version))"
    if borg init --help 2>/dev/null | grep -q 'repokey-blake2'; then BORG_ENC=repokey-blake2; else BORG_ENC=repokey; fi
    run borg-init borg init -e "$BORG_ENC"
    local n vm
    for ((n = 1; n <= NIGHTS; n++)); do
        place_night "$n"
        for vm in $VMS; do
            measure "borg-n$n-$vm" borg backup "$n" "$vm" -- borg create --compression lz4 \
                --timestamp "$(night_time "$n" | sed 's/Z$//')" "::$vm-night$n" "$WORKDIR/vms/$vm/disk0.img"
        done
    done
    # borg prune keeps N archives of the whole repository unless told which: one call per VM
    measure borg-prune borg prune "$NIGHTS" all -- sh -c 'for vm in $1; do borg prune --keep-last 1 -a "$vm-*" || exit 1; done; borg compact' sh "$VMS"
    local dir=$WORKDIR/restore/borg; rm -rf "$dir"; mkdir -p "$dir"
    measure borg-restore borg restore "$NIGHTS" "$RESTORE_VM" -- sh -c 'cd "$1" && exec borg extract --sparse "::$2"' sh "$dir" "$RESTORE_VM-night$NIGHTS"
    verify_restore "$dir"
}

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer"
for ((RUN = 1; RUN <= RUNS; RUN++)); do
    for t in ${TOOLS//,/ }; do
        case $t in cairn|restic|borg) ;; "") continue ;; *) die "unknown tool $t" ;; esac
        rm -rf -- "$WORKDIR/repo/$t" "$WORKDIR/cache/$t" "$WORKDIR/cache/borg-base"
        wait_quiet
        "run_$t"
        if (( ! KEEP || RUN < RUNS )); then
            rm -rf -- "$WORKDIR/repo/$t" "$WORKDIR/cache/$t" "$WORKDIR/cache/borg-base"
        fi
    done
done
RUN=0

# ------------------------------------------------------------ floor
phase "the floor (floor.py: unique non-zero 4 KiB blocks, zstd -3)"
IMGS=()
for ((n = 1; n <= NIGHTS; n++)); do for vm in $VMS; do IMGS+=("$CORPUS/gen$n/$vm.img"); done; done
LAST=()
for vm in $VMS; do LAST+=("$CORPUS/gen$NIGHTS/$vm.img"); done
measure floor-all "" floor "1-$NIGHTS" all -- python3 "$HERE/floor.py" --json "${IMGS[@]}"
measure floor-last "" floor "$NIGHTS" all -- python3 "$HERE/floor.py" --json "${LAST[@]}"

# ------------------------------------------------------------ report
phase "writing $OUT"
python3 - "$ROWS" "$LOGS/floor-all.out" "$LOGS/floor-last.out" "$NIGHTS" "$VMS" "$RESTORE_VM" >"$WORKDIR/table.md" <<'EOF'
import json, statistics, sys
rows_p, fall_p, flast_p, nights, vms, rvm = sys.argv[1:7]
nights = int(nights); vms = vms.split()
M = 1 << 20
rows = []
for l in open(rows_p):
    f = l.rstrip("\n").split("\t")
    if len(f) < 9:
        continue
    rows.append(dict(tool=f[0], step=f[1], night=f[2], vm=f[3], wall=float(f[4]), cpu=float(f[5]),
                     rss=int(f[6]), other=float(f[7]), repo=int(f[8]) if f[8] else 0, note=f[9] if len(f) > 9 else "",
                     run=int(f[10]) if len(f) > 10 and f[10] else 1))
runs = sorted(set(r["run"] for r in rows if r["tool"]))
med = statistics.median
tools = [t for t in ("cairn", "restic", "borg") if any(r["tool"] == t for r in rows)]
fall = json.load(open(fall_p)); flast = json.load(open(flast_p))
imgs = fall["images"]
per = len(vms)
cum_stream = [imgs[per * n - 1]["cum_zstd_stream_bytes"] for n in range(1, nights + 1)]
cum_block = [imgs[per * n - 1]["cum_zstd_block_bytes"] for n in range(1, nights + 1)]
cum_uniq = [imgs[per * n - 1]["cum_unique_blocks"] * fall["block"] for n in range(1, nights + 1)]
floor_repo = cum_stream
floor_add = [cum_stream[0]] + [cum_stream[i] - cum_stream[i - 1] for i in range(1, nights)]
floor_last = flast["zstd_stream_bytes"]

def sel(t, step, night=None, run=1):
    return [r for r in rows if r["tool"] == t and r["step"] == step and (night is None or r["night"] == str(night))
            and (run is None or r["run"] == run)]


def med_step(t, step, night=None):
    """per run: sums of wall, cpu, other over the matching rows; then the median over the runs"""
    w, c, o = [], [], []
    for k in runs:
        b = sel(t, step, night, k)
        if b:
            w.append(sum(r["wall"] for r in b)); c.append(sum(r["cpu"] for r in b)); o.append(sum(r["other"] for r in b))
    return (med(w), med(c), med(o), len(w), min(w), max(w)) if w else (0, 0, 0, 0, 0, 0)

def night_repo(t, n):
    b = sel(t, "backup", n)
    return b[-1]["repo"] if b else None

def fmt_night(t, n):
    w, c, o, k, lo, hi = med_step(t, "backup", n)
    rng = " [%.1f–%.1f]" % (lo, hi) if k > 1 else ""
    return "%.1f s%s (CPU %.1f s, %.0f %%; other %.0f s)" % (w, rng, c, 100 * c / w if w else 0, o)

mib = lambda b: "%.1f MiB" % (b / M)
ratio = lambda a, b: "%.2f×" % (a / b) if b else "-"
out = []
hdr = "| | " + " | ".join(tools) + " | floor |"
out.append(hdr)
out.append("|---|" + "---:|" * (len(tools) + 1))
for n in range(1, nights + 1):
    lab = "night 1 backup (%d VMs)" % per if n == 1 else "night %d backup" % n
    out.append("| %s | " % lab + " | ".join(fmt_night(t, n) for t in tools) + " | |")
for n in range(1, nights + 1):
    out.append("| repository after night %d | " % n + " | ".join(mib(night_repo(t, n)) for t in tools) +
               " | %s |" % mib(floor_repo[n - 1]))
for n in range(2, nights + 1):
    out.append("| night %d adds | " % n + " | ".join(mib(night_repo(t, n) - night_repo(t, n - 1)) for t in tools) +
               " | %s |" % mib(floor_add[n - 1]))
pr = {t: sel(t, "prune")[0] for t in tools if sel(t, "prune")}
out.append("| prune to the last night: time | " + " | ".join("%.1f s (CPU %.1f s, peak RSS %.0f MiB)" % (med_step(t, "prune")[0], med_step(t, "prune")[1], pr[t]["rss"] / 1024)
                                                      for t in tools) + " | |")
out.append("| repository after prune | " + " | ".join(mib(pr[t]["repo"]) for t in tools) + " | %s |" % mib(floor_last))
out.append("| peak RSS of a backup (max) | " + " | ".join("%.0f MiB" % (max(r["rss"] for r in sel(t, "backup", run=None)) / 1024)
                                                   for t in tools) + " | |")
rs = {t: sel(t, "restore")[0] for t in tools if sel(t, "restore")}
out.append("| restore of %s's disk (night %d) | " % (rvm, nights) +
           " | ".join("%.1f s (CPU %.1f s, peak RSS %.0f MiB; %s)" % (med_step(t, "restore")[0], med_step(t, "restore")[1], rs[t]["rss"] / 1024, rs[t]["note"])
                      for t in tools) + " | |")
out.append("")
out.append("Times: median of %d run(s) per tool%s; sizes, RSS and notes: run 1." % (len(runs), " ([min–max] of the runs' night sums)" if len(runs) > 1 else ""))
out.append("")
out.append("Ratios to the floor (zstd -3 one stream over the unique non-zero 4 KiB blocks):")
out.append("")
out.append("| | " + " | ".join(tools) + " |")
out.append("|---|" + "---:|" * len(tools))
for n in range(1, nights + 1):
    out.append("| repository after night %d | " % n + " | ".join(ratio(night_repo(t, n), floor_repo[n - 1]) for t in tools) + " |")
for n in range(2, nights + 1):
    out.append("| night %d adds | " % n + " | ".join(ratio(night_repo(t, n) - night_repo(t, n - 1), floor_add[n - 1]) for t in tools) + " |")
out.append("| after prune | " + " | ".join(ratio(pr[t]["repo"], floor_last) for t in tools) + " |")
out.append("")
out.append("The floor, per night (cumulative over the nights; 4 KiB blocks; MiB = 2^20 bytes):")
out.append("")
out.append("| night | non-zero blocks read | new unique blocks | unique raw (cum.) | zstd -3 per block (cum.) | zstd -3 one stream (cum.) | one stream, this night adds |")
out.append("|---|---:|---:|---:|---:|---:|---:|")
for n in range(1, nights + 1):
    im = imgs[per * (n - 1): per * n]
    out.append("| %d | %d | %d | %s | %s | %s | %s |" % (n, sum(i["nonzero_blocks"] for i in im), sum(i["new_unique_blocks"] for i in im),
               mib(cum_uniq[n - 1]), mib(cum_block[n - 1]), mib(cum_stream[n - 1]), mib(floor_add[n - 1])))
out.append("| night %d alone (the floor after prune) | %d | %d | %s | %s | %s | |" % (
    nights, sum(i["nonzero_blocks"] for i in flast["images"]), flast["unique_blocks"], mib(flast["raw_bytes"]),
    mib(flast["zstd_block_bytes"]), mib(floor_last)))
out.append("")
out.append("Every step (wall s, CPU s = user+sys, peak RSS, other CPU s = whole machine busy CPU minus the step's own, repository after the step):")
out.append("")
out.append("| run | tool | step | night | VM | wall s | CPU s | CPU % | peak RSS MiB | other CPU s | repo MiB | notes |")
out.append("|---:|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
for r in rows:
    out.append("| %s | %s | %s | %s | %s | %.2f | %.2f | %.0f | %.0f | %.1f | %s | %s |" % (
        r["run"] if r["tool"] else "-", r["tool"] or "-", r["step"], r["night"], r["vm"], r["wall"], r["cpu"], 100 * r["cpu"] / r["wall"] if r["wall"] else 0,
        r["rss"] / 1024, r["other"], "%.1f" % (r["repo"] / M) if r["tool"] else "", r["note"]))
print("\n".join(out))
EOF
{
    echo "# cairn, restic and borg on a multi-VM corpus: 4 VMs, 3 nights"
    echo
    echo "Run $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname): $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM; workdir $WORKDIR, corpus $CORPUS."
    echo
    echo "- cairn: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(have_tool cairn && echo ", binary $CAIRN_BIN_ORIG, \`cairn init\` defaults")"
    command -v restic >/dev/null && echo "- $(restic version | head -n1), repository v2, compression auto"
    command -v borg >/dev/null && echo "- $(borg --version), -e ${BORG_ENC:-repokey-blake2}, --compression lz4; restore with --sparse"
    echo "- Corpus (corpus.txt of corpus.sh):"
    grep -E ' image: ' "$CORPUS/corpus.txt" | sed 's/^/    - /'
    echo "- Images per night (apparent / allocated):"
    for ((n = 1; n <= NIGHTS; n++)); do
        s="    - night $n:"
        for vm in $VMS; do
            f=$CORPUS/gen$n/$vm.img
            s+=" $vm $(( $(img_bytes "$f") / 1073741824 )) GiB / $(( $(img_alloc "$f") / 1048576 )) MiB;"
        done
        echo "$s"
    done
    echo "- Times of a night are the sums over its 4 backups (run one after the other); CPU % = CPU / wall. Repository = \`du -sb\`."
    echo
    echo "## Commands"
    echo
    echo '```sh'
    printf '%q ' "$0" --corpus "$CORPUS" --workdir "$WORKDIR" --out "$OUT" --tools "$TOOLS" --restore-vm "$RESTORE_VM" --runs "$RUNS"; echo
    cat "$CMDS"
    echo '```'
    echo
    echo "## Results"
    echo
    cat "$WORKDIR/table.md"
    echo
    echo "Logs of every command: $LOGS"
} >"$OUT"
cat "$OUT"
phase "done: $OUT"
