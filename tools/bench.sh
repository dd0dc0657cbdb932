#!/usr/bin/env bash
# bench.sh -- end-to-end comparison of cairn, restic and borg on a VM disk image.
#
#   tools/bench.sh [--size-gib 4] [--workdir /tmp/cairn-bench] [--out results.md]
#                  [--tools cairn,restic,borg] [--seed 1] [--no-build]
#                  [--cairn-bin PATH] [--keep] [--scattered-writes N]
#                  [--quiet-wait SECS] [--retries N]
#
# Phases:
#   1. cargo build --release (binary ${CARGO_TARGET_DIR:-target}/release/cairn)
#   2. gen-tree.py content (~60% of the image size), mkimage.sh -> base.img
#      (sparse raw, GPT + ext4), then changed.img = copy of base.img with ~2% of
#      the allocated data rewritten in place by qemu-io (deterministic offsets):
#      90% as 64 KiB..1 MiB extents of new data (random or log-like text) spread
#      over the disk, 10% as 4 KiB `write -P 0xNN` writes, of which
#      --scattered-writes N (default 64 per GiB of image) land uniformly over the
#      allocated data and the rest in 16 hot 2 MiB zones.  Uniform scattered
#      writes dirty one whole chunk each, so N matters a lot for tools with
#      large chunks (restic ~1 MiB, borg ~2 MiB).
#   3. machine limits on base.img: cat, b3sum, zstd -1 -T1.
#   4. per tool, in a fresh repository under the workdir:
#        a   first backup of base.img
#        b   second backup of the same unchanged file
#        b!  same, forcing a full read (cairn --force-read, restic --force,
#            borg --files-cache=disabled)
#        c   backup after copying changed.img over the same path (nightly case)
#        d   restore of the latest snapshot to a fresh folder (verified with cmp)
#      each timed with GNU time (wall, user+sys CPU, peak RSS), plus MB/s of
#      logical data (apparent image size / wall) and `du -sb` of the repository.
#   5. markdown table to --out (commands first) and to stdout.
#
# Other processes: before each tool's sequence (and the machine limits) the
# script waits up to --quiet-wait seconds (default 600) for the machine to be
# idle (other processes < 10% of one core over 3 s).  Every step records "other
# CPU s" (whole-machine busy CPU from /proc/stat minus the step's own); if any
# step of a tool had other CPU > 0.5 s + 15% of its wall time, that tool's whole
# sequence is re-run in a fresh repository, up to --retries times (default 2);
# the table shows the last attempt and the number of attempts.
#
# The page cache is NOT dropped (needs root + affects the whole machine); instead
# the image is read once with `cat` before every backup step so every tool
# starts warm.  The workdir is wiped at start (only if it is empty or was made
# by this script).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

SIZE_GIB=4
WORKDIR=/tmp/cairn-bench
OUT=results.md
TOOLS=cairn,restic,borg
SEED=1
BUILD=1
CAIRN_BIN=
KEEP=0
QUIET_WAIT=600
RETRIES=2
SCATTERED=

usage() { sed -n '2,43p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --size-gib) SIZE_GIB=$2; shift 2 ;;
        --workdir) WORKDIR=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --tools) TOOLS=$2; shift 2 ;;
        --seed) SEED=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --cairn-bin) CAIRN_BIN=$2; BUILD=0; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --quiet-wait) QUIET_WAIT=$2; shift 2 ;;
        --retries) RETRIES=$2; shift 2 ;;
        --scattered-writes) SCATTERED=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "bench: unknown argument $1" >&2; usage 2 ;;
    esac
done
[[ $SIZE_GIB =~ ^[0-9]+$ && $SIZE_GIB -ge 1 ]] || { echo "bench: --size-gib must be an integer >= 1" >&2; exit 2; }
(( SIZE_GIB >= 4 )) || echo "bench: note: --size-gib $SIZE_GIB < 4 (fine for a smoke test)"
SCATTERED=${SCATTERED:-$((SIZE_GIB * 64))}
[[ $SCATTERED =~ ^[0-9]+$ ]] || { echo "bench: --scattered-writes must be an integer" >&2; exit 2; }
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
case $WORKDIR in /*) ;; *) WORKDIR=$PWD/$WORKDIR ;; esac
WORKDIR=${WORKDIR%/}

BENCH_NAME=bench
# shellcheck source=tools/bench-lib.sh
source "$HERE/bench-lib.sh"   # phase, info, die, logcmd, run, busy_ticks, wait_quiet

have_tool() { [[ ",$TOOLS," == *",$1,"* ]]; }

# ------------------------------------------------------------ prerequisites
for t in python3 qemu-io sfdisk mkfs.ext4 e2fsck b3sum zstd cmp du; do
    command -v "$t" >/dev/null || die "$t not found"
done
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) not found: apt-get install time"

# ------------------------------------------------------------ workdir
[[ -n $WORKDIR && $WORKDIR != / && $WORKDIR != "$HOME" && $WORKDIR != "$ROOT" ]] ||
    die "refusing to use $WORKDIR as workdir"
if [[ -e $WORKDIR ]]; then
    if [[ -n $(ls -A "$WORKDIR") && ! -e $WORKDIR/.cairn-bench ]]; then
        die "$WORKDIR is not empty and was not made by bench.sh; remove it or pick another --workdir"
    fi
    phase "wiping workdir $WORKDIR"
    rm -rf -- "$WORKDIR"
fi
mkdir -p "$WORKDIR"/{img,data,repo,cache,logs,restore,tmp}
touch "$WORKDIR/.cairn-bench"
LOGS=$WORKDIR/logs
ROWS=$WORKDIR/rows.tsv          # tool step wall cpu rss_kib mbps repo_bytes note other_cpu
LIMITS=$WORKDIR/limits.tsv      # cmd wall cpu rss_kib mbps other_cpu
CMDS=$WORKDIR/commands.txt
: >"$ROWS"; : >"$LIMITS"; : >"$CMDS"

# Tool environments: every cache under the workdir, so runs are independent.
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$WORKDIR/repo/restic
export RESTIC_CACHE_DIR=$WORKDIR/cache/restic
export BORG_PASSPHRASE=bench BORG_REPO=$WORKDIR/repo/borg
export BORG_BASE_DIR=$WORKDIR/cache/borg-base BORG_CACHE_DIR=$WORKDIR/cache/borg
export BORG_DISPLAY_PASSPHRASE=no BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export CAIRN_PASSWORD=bench CAIRN_REPOSITORY=$WORKDIR/repo/cairn
export CAIRN_CACHE_DIR=$WORKDIR/cache/cairn
unset CAIRN_PASSWORD_FILE || true
cat >>"$CMDS" <<EOF
# environment (all caches under the workdir; workdir wiped at start)
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$RESTIC_REPOSITORY RESTIC_CACHE_DIR=$RESTIC_CACHE_DIR
export BORG_PASSPHRASE=bench BORG_REPO=$BORG_REPO BORG_BASE_DIR=$BORG_BASE_DIR BORG_CACHE_DIR=$BORG_CACHE_DIR
export CAIRN_PASSWORD=bench CAIRN_REPOSITORY=$CAIRN_REPOSITORY CAIRN_CACHE_DIR=$CAIRN_CACHE_DIR
EOF

# log a command line (shell-quoted) to the commands list
# log and run, output to a log file

# Busy CPU seconds of the whole machine (user+nice+system+irq+softirq+steal from
# /proc/stat); the difference over a step minus the step's own user+sys CPU is
# "other CPU": work by other processes during the step (0 on a quiet machine).

# wait_quiet: wait until other processes use < 10% of one core over 3 s (at
# most QUIET_WAIT seconds)
# contaminated_since N: true if a row after line N had other CPU > 0.5 s + 15% of wall
contaminated_since() {
    awk -F'\t' -v n="$1" 'NR > n && $9 > 0.5 + 0.15 * $3 {bad = 1} END {exit !bad}' "$ROWS"
}

# measure NAME TOOL STEP NOTE_FN -- CMD...   (run CMD under GNU time, record a row)
# the command's output goes to logs/NAME.out/.err
LAST_WALL=0
measure() {
    local name=$1 tool=$2 step=$3; shift 3
    [[ $1 == -- ]] && shift
    if [[ $1 == sh && $2 == -c && $# -eq 5 ]]; then
        local q; printf -v q '%q' "$5"
        echo "${3//\"\$1\"/$q}" >>"$CMDS"     # sh -c 'SCRIPT' sh ARG -> SCRIPT with ARG
    else
        logcmd "$@"
    fi
    local tf=$LOGS/$name.time b0 b1
    b0=$(busy_ticks)
    if ! /usr/bin/time -f '%e %U %S %M' -o "$tf" -- "$@" </dev/null \
            >"$LOGS/$name.out" 2>"$LOGS/$name.err"; then
        echo "bench: command failed: $*" >&2
        tail -n 20 "$LOGS/$name.err" >&2 || true
        exit 1
    fi
    b1=$(busy_ticks)
    local wall user sys rss
    read -r wall user sys rss < <(tail -n1 "$tf")
    LAST_WALL=$wall
    local cpu mbps other
    cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN{printf "%.2f", u+s}')
    other=$(awk -v d=$((b1 - b0)) -v hz="$HZ" -v c="$cpu" 'BEGIN{o = d/hz - c; printf "%.1f", (o < 0 ? 0 : o)}')
    mbps=$(awk -v b="$IMG_BYTES" -v w="$wall" 'BEGIN{ if (w > 0) printf "%.0f", b/w/1e6; else print "inf" }')
    if [[ -n $tool ]]; then
        local repo_bytes
        repo_bytes=$(du -sb "$WORKDIR/repo/$tool" | cut -f1)
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$step" "$wall" "$cpu" "$rss" \
            "$mbps" "$repo_bytes" "" "$other" >>"$ROWS"
        info "$tool $step: wall ${wall}s cpu ${cpu}s rss $((rss / 1024))MiB ${mbps}MB/s repo $((repo_bytes / 1048576))MiB other-cpu ${other}s"
    else
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$step" "$wall" "$cpu" "$rss" "$mbps" "$other" >>"$LIMITS"
        info "$step: wall ${wall}s cpu ${cpu}s ${mbps}MB/s other-cpu ${other}s"
    fi
}
# append a note to the last row
note() {
    [[ -n $* ]] || return 0
    python3 - "$ROWS" "$*" <<'EOF'
import sys
p, n = sys.argv[1], sys.argv[2]
rows = open(p).read().split("\n")
while rows and rows[-1] == "":
    rows.pop()
f = rows[-1].split("\t")
f[7] = (f[7] + "; " + n) if f[7] else n
rows[-1] = "\t".join(f)
open(p, "w").write("\n".join(rows) + "\n")
EOF
}

# ------------------------------------------------------------ build cairn
if have_tool cairn; then
    prepare_cairn
fi
if have_tool restic && ! command -v restic >/dev/null; then
    info "restic not installed: skipping it"; TOOLS=${TOOLS//restic/}
fi
if have_tool borg && ! command -v borg >/dev/null; then
    info "borg not installed: skipping it"; TOOLS=${TOOLS//borg/}
fi

# ------------------------------------------------------------ images
IMG=$WORKDIR/img/base.img
IMG2=$WORKDIR/img/changed.img
TREE=$WORKDIR/tree
TREE_MIB=$((SIZE_GIB * 1024 * 60 / 100))

phase "generating ${TREE_MIB} MiB of VM-like content (gen-tree.py, seed $SEED)"
logcmd python3 "$HERE/gen-tree.py" "$TREE" --size-mib "$TREE_MIB" --seed "$SEED"
python3 "$HERE/gen-tree.py" "$TREE" --size-mib "$TREE_MIB" --seed "$SEED"

phase "making ${SIZE_GIB} GiB image (mkimage.sh)"
logcmd "$HERE/mkimage.sh" "$IMG" "${SIZE_GIB}G" "$TREE"
"$HERE/mkimage.sh" "$IMG" "${SIZE_GIB}G" "$TREE"
if (( ! KEEP )); then rm -rf -- "$TREE"; fi
IMG_BYTES=$(stat -c %s "$IMG")
IMG_ALLOC=$(( $(stat -c %b "$IMG") * $(stat -c %B "$IMG") ))

phase "making the ~2%-changed image in place with qemu-io"
logcmd cp --sparse=always "$IMG" "$IMG2"
cp --sparse=always "$IMG" "$IMG2"
# Plan the writes: deterministic (seeded) offsets, weighted towards allocated
# data (SEEK_DATA/SEEK_HOLE), 4 KiB aligned, past the GPT header.
python3 - "$IMG2" "$SEED" "$WORKDIR/tmp" "$SCATTERED" >"$WORKDIR/tmp/qemu-io.cmds" 2>"$WORKDIR/tmp/mutate.txt" <<'EOF'
import math, os, random, sys
img, seed, tmp, scattered = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rng = random.Random(f"cairn-bench/{seed}/mutate")
size = os.path.getsize(img)
fd = os.open(img, os.O_RDONLY)
extents, pos = [], 0
while pos < size:
    try:
        d = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        break
    h = os.lseek(fd, d, os.SEEK_HOLE)
    extents.append((d, h - d))
    pos = h
os.close(fd)
data = sum(l for _, l in extents)
budget = int(data * 0.02)
lo, hi = 1 << 20, size - (1 << 20)           # keep clear of the GPT headers
def pick(n, in_data):
    if in_data and extents:
        r = rng.randrange(data)
        for off, l in extents:
            if r < l:
                o = off + r
                break
            r -= l
    else:
        o = rng.randrange(lo, hi)
    o -= o % 4096
    return max(lo, min(o, hi - n))
WORDS = "the disk image backup chunk server kernel request latency user session".split()
cmds, ext_bytes, ext_n = [], 0, 0
while ext_bytes < budget * 90 // 100:          # 90%: extents of new data
    n = int(math.exp(rng.uniform(math.log(64 << 10), math.log(1 << 20))))
    n -= n % 4096
    o = pick(n, rng.random() < 0.85)
    src = os.path.join(tmp, f"extent-{ext_n:04d}.bin")
    if rng.random() < 0.5:                     # incompressible new data
        buf = rng.randbytes(n)
    else:                                      # compressible text
        lines = []
        L = 0
        while L < n:
            s = "%d %s %s\n" % (rng.getrandbits(40), rng.choice(WORDS), rng.choice(WORDS))
            lines.append(s); L += len(s)
        buf = "".join(lines).encode()[:n]
    with open(src, "wb") as f:
        f.write(buf)
    cmds.append(f"write -q -s {src} {o} {n}")
    ext_bytes += n; ext_n += 1
# 10%: 4 KiB pattern writes; `scattered` of them uniformly over the allocated
# data, the rest clustered in 16 hot 2 MiB zones (like fs metadata / journal /
# database pages that are rewritten every day)
small = max(0, (budget - ext_bytes) // 4096)
scattered = min(scattered, small)
zones = [pick(2 << 20, True) for _ in range(16)]
for i in range(small):
    if i < scattered:
        o = pick(4096, True)
    else:
        z = zones[rng.randrange(len(zones))]
        o = z + rng.randrange(512) * 4096
    cmds.append(f"write -q -P 0x{rng.randrange(1, 256):02x} {o} 4096")
print("\n".join(cmds))
total = ext_bytes + small * 4096
sys.stderr.write(f"{ext_n} extents of 64 KiB..1 MiB ({ext_bytes / 2**20:.1f} MiB, half random, "
                 f"half text; 85% over allocated data, 15% anywhere) + {small} x 4 KiB pattern "
                 f"writes ({small * 4096 / 2**20:.1f} MiB; {scattered} scattered uniformly over "
                 f"the allocated data, {small - scattered} in 16 hot 2 MiB zones) = "
                 f"{total / 2**20:.1f} MiB = {100 * total / max(data, 1):.2f}% of "
                 f"{data / 2**20:.0f} MiB allocated data\n")
EOF
info "$(cat "$WORKDIR/tmp/mutate.txt")"
logcmd qemu-io -f raw "$IMG2" "<" "$WORKDIR/tmp/qemu-io.cmds"
qemu-io -f raw "$IMG2" <"$WORKDIR/tmp/qemu-io.cmds" >"$LOGS/qemu-io.out" 2>&1 ||
    die "qemu-io failed (log: $LOGS/qemu-io.out)"
if grep -qiE 'error|failed|invalid' "$LOGS/qemu-io.out"; then
    die "qemu-io reported errors (log: $LOGS/qemu-io.out)"
fi
rm -f "$WORKDIR"/tmp/extent-*.bin
cmp -s "$IMG" "$IMG2" && die "changed image is identical to base image"
IMG2_ALLOC=$(( $(stat -c %b "$IMG2") * $(stat -c %B "$IMG2") ))
info "base.img: apparent $IMG_BYTES, allocated $IMG_ALLOC; changed.img allocated $IMG2_ALLOC"

# ------------------------------------------------------------ machine limits
phase "machine limits on base.img (page cache warmed by a first cat)"
wait_quiet
cat "$IMG" >/dev/null
cat "$IMG2" >/dev/null
measure limit-cat "" "cat IMG > /dev/null" -- sh -c 'cat "$1" >/dev/null' sh "$IMG"
measure limit-b3sum "" "b3sum IMG" -- b3sum "$IMG"
measure limit-b3sum-1t "" "b3sum --num-threads 1 IMG" -- b3sum --num-threads 1 "$IMG"
measure limit-zstd "" "zstd -1 -T1 -c IMG > /dev/null" -- sh -c 'zstd -q -1 -T1 -c "$1" >/dev/null' sh "$IMG"

# ------------------------------------------------------------ per-tool runs
DISK=$WORKDIR/data/disk.img

warm() { cat "$DISK" >/dev/null; }
reset_disk() {
    rm -f "$DISK"
    logcmd cp --sparse=always "$IMG" "$DISK"
    cp --sparse=always "$IMG" "$DISK"
    warm
}
change_disk() {
    # copy over the existing file: same path, same inode, new content and mtime
    logcmd cp --sparse=always "$IMG2" "$DISK"
    cp --sparse=always "$IMG2" "$DISK"
    warm
}
verify_restore() {
    local dir=$1 f n
    n=$(find "$dir" -type f | wc -l)
    f=$(find "$dir" -type f -name 'disk.img*' | head -n1)
    [[ -n $f ]] || f=$(find "$dir" -type f | head -n1)
    if [[ -z $f ]]; then note "restore: NO FILE"; echo "bench: WARNING: restore produced no file" >&2; return; fi
    local alloc=$(( $(stat -c %b "$f") * $(stat -c %B "$f") / 1048576 ))
    if cmp -s "$f" "$IMG2"; then
        note "restore verified (cmp ok, ${alloc} MiB allocated, ${n} file(s))"
    else
        note "restore MISMATCH"
        echo "bench: WARNING: restored $f differs from changed.img" >&2
    fi
    rm -rf -- "$dir"
}
mib() { awk -v b="$1" 'BEGIN{printf "%.1f MiB", b/1048576}'; }

# stats from the tools' own output
cairn_note() {   # cairn --json output: one JSON object
    python3 - "$LOGS/$1.out" <<'EOF' || true
import json, sys
try:
    txt = open(sys.argv[1]).read().strip()
    j = json.loads(txt[txt.index("{"):])
except Exception:
    sys.exit(0)
m = lambda k: "%.1f MiB" % (j[k] / 2**20) if isinstance(j.get(k), (int, float)) else "?"
print("read %s, new %s, stored %s, holes %s" % (m("bytes_read"), m("bytes_new"),
      m("bytes_stored"), m("holes_skipped")))
EOF
}
restic_note() { grep -m1 -o 'Added to the repo.*' "$LOGS/$1.out" || true; }
borg_note() {
    awk '/^This archive:/ {print "this archive: orig " $3 $4 ", compr " $5 $6 ", dedup " $7 $8}' \
        "$LOGS/$1.out" "$LOGS/$1.err" | head -n1
}

run_cairn() {
    phase "cairn"
    run cairn-init "$CAIRN_BIN" init
    reset_disk
    measure cairn-a cairn "a first backup" -- "$CAIRN_BIN" backup --vm bench --json "$DISK"
    note "$(cairn_note cairn-a)"
    warm
    measure cairn-b cairn "b unchanged" -- "$CAIRN_BIN" backup --vm bench --json "$DISK"
    note "$(cairn_note cairn-b)"
    warm
    measure cairn-bf cairn "b! unchanged, --force-read" -- "$CAIRN_BIN" backup --vm bench --force-read --json "$DISK"
    note "$(cairn_note cairn-bf)"
    change_disk
    measure cairn-c cairn "c 2% changed" -- "$CAIRN_BIN" backup --vm bench --json "$DISK"
    note "$(cairn_note cairn-c)"
    local dir=$WORKDIR/restore/cairn
    rm -rf "$dir"; mkdir -p "$dir"
    measure cairn-d cairn "d restore latest" -- "$CAIRN_BIN" restore bench:latest --target "$dir"
    verify_restore "$dir"
}

run_restic() {
    phase "restic ($(restic version | head -n1))"
    run restic-init restic init
    reset_disk
    measure restic-a restic "a first backup" -- restic backup "$DISK"
    note "$(restic_note restic-a)"
    warm
    measure restic-b restic "b unchanged" -- restic backup "$DISK"
    note "$(restic_note restic-b)"
    warm
    measure restic-bf restic "b! unchanged, --force" -- restic backup --force "$DISK"
    note "$(restic_note restic-bf)"
    change_disk
    measure restic-c restic "c 2% changed" -- restic backup "$DISK"
    note "$(restic_note restic-c)"
    local dir=$WORKDIR/restore/restic
    rm -rf "$dir"; mkdir -p "$dir"
    measure restic-d restic "d restore latest" -- restic restore latest --target "$dir"
    verify_restore "$dir"
}

BORG_ENC=
run_borg() {
    phase "borg ($(borg --version))"
    if borg init --help 2>/dev/null | grep -q 'repokey-blake2'; then BORG_ENC=repokey-blake2; else BORG_ENC=repokey; fi
    run borg-init borg init -e "$BORG_ENC"
    reset_disk
    measure borg-a borg "a first backup" -- borg create --stats --compression lz4 ::a "$DISK"
    note "$(borg_note borg-a)"
    warm
    measure borg-b borg "b unchanged" -- borg create --stats --compression lz4 ::b "$DISK"
    note "$(borg_note borg-b)"
    warm
    measure borg-bf borg "b! unchanged, --files-cache=disabled" -- borg create --stats --compression lz4 --files-cache=disabled ::bf "$DISK"
    note "$(borg_note borg-bf)"
    change_disk
    measure borg-c borg "c 2% changed" -- borg create --stats --compression lz4 ::c "$DISK"
    note "$(borg_note borg-c)"
    local dir=$WORKDIR/restore/borg
    rm -rf "$dir"; mkdir -p "$dir"
    # borg extract writes into the current directory
    measure borg-d borg "d restore latest (--sparse)" -- sh -c 'cd "$1" && exec borg extract --sparse ::c' sh "$dir"
    verify_restore "$dir"
}

for t in ${TOOLS//,/ }; do
    case $t in cairn|restic|borg) ;; "") continue ;; *) die "unknown tool $t" ;; esac
    attempt=1
    while :; do
        n0=$(wc -l <"$ROWS")
        wait_quiet
        "run_$t"
        if contaminated_since "$n0" && (( attempt <= RETRIES )); then
            info "$t: another process used the CPU during a step; re-running $t (attempt $((attempt + 1)))"
            head -n "$n0" "$ROWS" >"$ROWS.tmp" && mv "$ROWS.tmp" "$ROWS"
            rm -rf -- "$WORKDIR/repo/$t" "$WORKDIR/cache/$t" "$WORKDIR/cache/borg-base" "$WORKDIR/restore/$t"
            attempt=$((attempt + 1))
            continue
        fi
        break
    done
    if (( attempt > 1 )); then
        # mark the rows of this tool with the attempt count
        awk -F'\t' -v OFS='\t' -v t="$t" -v a="$attempt" \
            '$1 == t {$8 = ($8 == "" ? "" : $8 "; ") "attempt " a} {print}' "$ROWS" >"$ROWS.tmp" &&
            mv "$ROWS.tmp" "$ROWS"
    fi
done

# ------------------------------------------------------------ report
phase "writing $OUT"
versions() {
    echo "- cairn: repo at $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && [[ -z $(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] || echo ' (+ uncommitted changes in src)')$(have_tool cairn && echo ", binary $CAIRN_BIN_ORIG (built $(date -u -r "$CAIRN_BIN_ORIG" +%H:%M:%SZ), run from a copy)" || echo ' (not run)')"
    command -v restic >/dev/null && echo "- $(restic version | head -n1)"
    command -v borg >/dev/null && echo "- $(borg --version)"
    echo "- $(qemu-img --version | head -n1), $(mkfs.ext4 -V 2>&1 | head -n1), $(b3sum --version), $(zstd --version | head -n1)"
}
{
    echo "# cairn benchmark: ${SIZE_GIB} GiB VM image"
    echo
    echo "Run $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname): $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r); workdir $WORKDIR ($(df -T "$WORKDIR" | awk 'NR==2 {print $2}'))."
    echo
    echo "## Commands"
    echo
    echo '```sh'
    printf '%q ' "$0" --size-gib "$SIZE_GIB" --workdir "$WORKDIR" --out "$OUT" --tools "$TOOLS" --seed "$SEED"; echo
    cat "$CMDS"
    echo '```'
    echo
    echo "## Setup"
    echo
    versions
    echo "- Image: $(mib "$IMG_BYTES") raw (sparse, $(mib "$IMG_ALLOC") allocated), GPT + ext4 holding ${TREE_MIB} MiB from gen-tree.py (seed $SEED): real /usr files, logs/text, ~20% random data."
    echo "- Changed image: $(cat "$WORKDIR/tmp/mutate.txt"), written in place with qemu-io; copied over the same path before step c."
    echo "- Page cache: NOT dropped; every backup step is preceded by \`cat\` of the image, so all numbers are warm-cache (the disk is not measured)."
    echo "- Before each tool (and the limits) the script waited for an idle machine (up to ${QUIET_WAIT}s); a tool whose steps had other CPU > 0.5 s + 15% of wall was re-run from scratch (up to $RETRIES times; 'attempt N' in the notes)."
    echo "- Other CPU s = busy CPU time of the whole machine during the step (/proc/stat) minus the step's own CPU: work by other processes; well above 0 means the step shared the 2 cores and its wall time is pessimistic."
    echo "- MB/s = apparent image size ($IMG_BYTES bytes) / wall time, MB = 10^6 bytes. CPU = user + sys. Peak RSS = GNU time %M. Repo = \`du -sb\` of the repository after the step."
    echo "- cairn: \`cairn init\` defaults. restic: repository format v2, compression auto (zstd), default chunker (~1 MiB avg CDC), cache in the workdir. borg: \`-e ${BORG_ENC:-repokey-blake2}\`, compression lz4 (the borg default, given explicitly), default buzhash chunker (~2 MiB avg), restore with \`--sparse\`. restic $(restic version 2>/dev/null | awk '{print $2}') restore has no sparse option (writes the holes as zeros)."
    echo "- borg 1.2 keeps a file in its files cache only if its ctime/mtime is older than the newest one seen in that backup, so with a single file argument the files cache never hits: borg's \"b unchanged\" re-reads and re-chunks the whole image (status A), like the forced variant."
    echo
    echo "## Results"
    echo
    echo "| tool | step | wall s | CPU s | CPU % | other CPU s | peak RSS MiB | MB/s | repo MiB | notes |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
    awk -F'\t' '{ cpup = ($3 > 0) ? sprintf("%.0f", 100*$4/$3) : "-";
                  printf "| %s | %s | %.2f | %.2f | %s | %s | %.0f | %s | %.1f | %s |\n",
                         $1, $2, $3, $4, cpup, $9, $5/1024, $6, $7/1048576, $8 }' "$ROWS"
    echo
    echo "## Machine limits (same image, warm page cache)"
    echo
    echo "| command | wall s | CPU s | other CPU s | peak RSS MiB | MB/s |"
    echo "|---|---:|---:|---:|---:|---:|"
    awk -F'\t' '{ printf "| `%s` | %.2f | %.2f | %s | %.0f | %s |\n", $1, $2, $3, $6, $4/1024, $5 }' "$LIMITS"
    echo
    echo "b3sum memory-maps the file, so its peak RSS counts the page-cache pages it mapped. All of these read the holes of the sparse image as zeros."
    echo
    echo "Logs of every command: $LOGS"
} >"$OUT"
echo
cat "$OUT"
phase "done: $OUT"
