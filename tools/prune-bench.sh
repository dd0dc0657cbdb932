#!/usr/bin/env bash
# prune-bench.sh -- retention on a long nightly history: cairn vs restic.
#
#   tools/prune-bench.sh [--size-gib 1] [--nights 120] [--mid 40] [--change-pct 1]
#                        [--workdir /tmp/cairn-prune-bench] [--out prune-results.md]
#                        [--tools cairn,restic] [--seed 1] [--no-build]
#                        [--cairn-bin PATH] [--quiet-wait SECS] [--retries N]
#
# Phases:
#   1. cargo build --release (skipped with --no-build / --cairn-bin); the binary
#      is run from a copy in the workdir, so a rebuild meanwhile cannot swap it.
#   2. gen-tree.py content (~60% of the image) + mkimage.sh -> disk.img, a sparse
#      raw GPT + ext4 image.
#   3. History: for night 1..N (--time one day apart from 2026-01-01T02:00Z):
#      change ~--change-pct % of the allocated data in place (night >= 2), then
#      `cairn backup` and `restic backup` of the same file.  A change is 80%
#      64 KiB..1 MiB extents of new data (half random, half text; 90% over
#      allocated data, 10% into holes, i.e. the filesystem grows) and 20% 4 KiB
#      writes (32 per GiB of image per 1% scattered over the data, as bench.sh
#      does, the rest in 16 hot 2 MiB zones).  After night --mid
#      and night N each repository and its local cache are copied aside.
#   4. For each copy (--mid and N snapshots) and each tool, in a fresh copy:
#        forget --keep-daily 7 --keep-weekly 4 --keep-monthly 3 --prune
#        prune   (a second, separate prune: the cost of a prune with nothing to do)
#      each timed with GNU time (wall, user+sys CPU, peak RSS) and `du -sb` of the
#      repository before and after.  The snapshots left are counted with
#      `snapshots --json` (both tools must keep the same number) and `cairn check`
#      runs on the result (untimed).
#   5. markdown table to --out and stdout.
#
# Other processes: like bench.sh, each measured sequence waits (up to
# --quiet-wait s, default 600) for an idle machine (others < 10% of one core
# over 3 s) and records "other CPU" (whole-machine busy CPU from /proc/stat minus
# the step's own); a sequence with other CPU > 0.5 s + 15% of wall in any step
# is redone from the saved copy, up to --retries times (default 2).  The
# history (phase 3) is setup, not a measurement: its totals are shown for
# information only.  The page cache is not dropped (warm-cache figures).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

SIZE_GIB=1
NIGHTS=120
MID=40
CHANGE_PCT=1
WORKDIR=/tmp/cairn-prune-bench
OUT=prune-results.md
TOOLS=cairn,restic
SEED=1
BUILD=1
CAIRN_BIN=
QUIET_WAIT=600
RETRIES=2
KEEP_RULES=(--keep-daily 7 --keep-weekly 4 --keep-monthly 3)

usage() { sed -n '2,37p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --size-gib) SIZE_GIB=$2; shift 2 ;;
        --nights) NIGHTS=$2; shift 2 ;;
        --mid) MID=$2; shift 2 ;;
        --change-pct) CHANGE_PCT=$2; shift 2 ;;
        --workdir) WORKDIR=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --tools) TOOLS=$2; shift 2 ;;
        --seed) SEED=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --cairn-bin) CAIRN_BIN=$2; BUILD=0; shift 2 ;;
        --quiet-wait) QUIET_WAIT=$2; shift 2 ;;
        --retries) RETRIES=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "prune-bench: unknown argument $1" >&2; usage 2 ;;
    esac
done
for v in SIZE_GIB NIGHTS MID; do
    [[ ${!v} =~ ^[0-9]+$ && ${!v} -ge 1 ]] || { echo "prune-bench: --${v,,} must be an integer >= 1" >&2; exit 2; }
done
(( MID < NIGHTS )) || { echo "prune-bench: --mid must be < --nights" >&2; exit 2; }
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
case $WORKDIR in /*) ;; *) WORKDIR=$PWD/$WORKDIR ;; esac
WORKDIR=${WORKDIR%/}

BENCH_NAME=prune-bench
# shellcheck source=tools/bench-lib.sh
source "$HERE/bench-lib.sh"   # phase, info, die, logcmd, run, busy_ticks, wait_quiet
have_tool() { [[ ",$TOOLS," == *",$1,"* ]]; }

for t in python3 sfdisk mkfs.ext4 e2fsck du; do
    command -v "$t" >/dev/null || die "$t not found"
done
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) not found: apt-get install time"
if have_tool restic && ! command -v restic >/dev/null; then
    info "restic not installed: skipping it"; TOOLS=${TOOLS//restic/}
fi

# ------------------------------------------------------------ workdir
[[ -n $WORKDIR && $WORKDIR != / && $WORKDIR != "$HOME" && $WORKDIR != "$ROOT" ]] ||
    die "refusing to use $WORKDIR as workdir"
if [[ -e $WORKDIR ]]; then
    if [[ -n $(ls -A "$WORKDIR") && ! -e $WORKDIR/.cairn-prune-bench ]]; then
        die "$WORKDIR is not empty and was not made by prune-bench.sh; remove it or pick another --workdir"
    fi
    phase "wiping workdir $WORKDIR"
    rm -rf -- "$WORKDIR"
fi
mkdir -p "$WORKDIR"/{img,repo,cache,saved,logs,tmp}
touch "$WORKDIR/.cairn-prune-bench"
LOGS=$WORKDIR/logs
ROWS=$WORKDIR/rows.tsv   # tool snaps step wall cpu rss other before after note
HIST=$WORKDIR/history.tsv  # night tool wall
CMDS=$WORKDIR/commands.txt
: >"$ROWS"; : >"$HIST"; : >"$CMDS"

# Snapshot times are UTC for both tools; restic's --time and its day buckets use
# the local zone, so pin it.
export TZ=UTC
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$WORKDIR/repo/restic
export RESTIC_CACHE_DIR=$WORKDIR/cache/restic
export CAIRN_PASSWORD=bench CAIRN_REPOSITORY=$WORKDIR/repo/cairn
export CAIRN_CACHE_DIR=$WORKDIR/cache/cairn
unset CAIRN_PASSWORD_FILE || true
cat >>"$CMDS" <<EOF
# environment (all caches under the workdir; workdir wiped at start)
export TZ=UTC RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$RESTIC_REPOSITORY RESTIC_CACHE_DIR=$RESTIC_CACHE_DIR
export CAIRN_PASSWORD=bench CAIRN_REPOSITORY=$CAIRN_REPOSITORY CAIRN_CACHE_DIR=$CAIRN_CACHE_DIR
EOF

# Same idle-machine method as bench.sh.
contaminated_since() {
    awk -F'\t' -v n="$1" 'NR > n && $7 > 0.5 + 0.15 * $4 {bad = 1} END {exit !bad}' "$ROWS"
}
repo_bytes() { du -sb "$WORKDIR/repo/$1" | cut -f1; }

# measure NAME TOOL SNAPS STEP -- CMD...: GNU time + other CPU + repo size before/after
measure() {
    local name=$1 tool=$2 snaps=$3 step=$4; shift 4
    [[ $1 == -- ]] && shift
    logcmd "$@"
    local tf=$LOGS/$name.time b0 b1 before after
    before=$(repo_bytes "$tool")
    b0=$(busy_ticks)
    if ! /usr/bin/time -f '%e %U %S %M' -o "$tf" -- "$@" </dev/null \
            >"$LOGS/$name.out" 2>"$LOGS/$name.err"; then
        echo "prune-bench: command failed: $*" >&2
        tail -n 20 "$LOGS/$name.err" >&2 || true
        exit 1
    fi
    b1=$(busy_ticks)
    after=$(repo_bytes "$tool")
    local wall user sys rss cpu other
    read -r wall user sys rss < <(tail -n1 "$tf")
    cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN{printf "%.2f", u+s}')
    other=$(awk -v d=$((b1 - b0)) -v hz="$HZ" -v c="$cpu" 'BEGIN{o = d/hz - c; printf "%.1f", (o < 0 ? 0 : o)}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$snaps" "$step" "$wall" "$cpu" \
        "$rss" "$other" "$before" "$after" "" >>"$ROWS"
    info "$tool@$snaps $step: wall ${wall}s cpu ${cpu}s rss $((rss / 1024))MiB repo $((before / 1048576))->$((after / 1048576))MiB other-cpu ${other}s"
}
note() {   # append a note to the last row
    [[ -n $* ]] || return 0
    python3 - "$ROWS" "$*" <<'EOF'
import sys
p, n = sys.argv[1], sys.argv[2]
rows = open(p).read().rstrip("\n").split("\n")
f = rows[-1].split("\t")
f[9] = (f[9] + "; " + n) if f[9] else n
rows[-1] = "\t".join(f)
open(p, "w").write("\n".join(rows) + "\n")
EOF
}

# ------------------------------------------------------------ build
if have_tool cairn; then
    prepare_cairn
fi

# ------------------------------------------------------------ image
IMG=$WORKDIR/img/disk.img
TREE=$WORKDIR/tree
TREE_MIB=$((SIZE_GIB * 1024 * 60 / 100))
phase "generating ${TREE_MIB} MiB of content and a ${SIZE_GIB} GiB image"
logcmd python3 "$HERE/gen-tree.py" "$TREE" --size-mib "$TREE_MIB" --seed "$SEED"
python3 "$HERE/gen-tree.py" "$TREE" --size-mib "$TREE_MIB" --seed "$SEED" >"$LOGS/gen-tree.out"
logcmd "$HERE/mkimage.sh" "$IMG" "${SIZE_GIB}G" "$TREE"
"$HERE/mkimage.sh" "$IMG" "${SIZE_GIB}G" "$TREE" >"$LOGS/mkimage.out"
rm -rf -- "$TREE"
alloc_bytes() { echo $(( $(stat -c %b "$1") * $(stat -c %B "$1") )); }
ALLOC0=$(alloc_bytes "$IMG")
info "image: $(stat -c %s "$IMG") bytes apparent, $ALLOC0 allocated"

# mutate NIGHT: change ~CHANGE_PCT % of the allocated data in place (pwrite into
# the raw file, which is what qemu-io -f raw does; one process per night instead
# of one small file per qemu-io write).  Deterministic per seed and night.
cat >"$WORKDIR/tmp/mutate.py" <<'EOF'
import math, os, random, sys
img, seed, night, pct = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
rng = random.Random(f"cairn-prune-bench/{seed}/{night}")
zrng = random.Random(f"cairn-prune-bench/{seed}/zones")   # same hot zones every night
size = os.path.getsize(img)
fd = os.open(img, os.O_RDWR)
extents, pos = [], 0
while pos < size:
    try:
        d = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        break
    h = os.lseek(fd, d, os.SEEK_HOLE)
    extents.append((d, h - d))
    pos = h
data = sum(l for _, l in extents)
budget = int(data * pct / 100)
lo, hi = 1 << 20, size - (1 << 20)           # keep clear of the GPT headers
def pick(r, n, in_data):
    if in_data:
        x = r.randrange(data)
        for off, l in extents:
            if x < l:
                o = off + x
                break
            x -= l
    else:
        o = r.randrange(lo, hi)
    o -= o % 4096
    return max(lo, min(o, hi - n))
WORDS = "the disk image backup chunk server kernel request latency user session".split()
done = 0
while done < budget * 80 // 100:             # 80%: extents of new data
    n = int(math.exp(rng.uniform(math.log(64 << 10), math.log(1 << 20))))
    n -= n % 4096
    o = pick(rng, n, rng.random() < 0.9)
    if rng.random() < 0.5:
        buf = rng.randbytes(n)
    else:
        s = []
        L = 0
        while L < n:
            t = "%d %s %s\n" % (rng.getrandbits(40), rng.choice(WORDS), rng.choice(WORDS))
            s.append(t); L += len(t)
        buf = "".join(s).encode()[:n]
    os.pwrite(fd, buf, o)
    done += n
zones = [pick(zrng, 2 << 20, True) for _ in range(16)]
small = max(0, (budget - done) // 4096)
# 20%: 4 KiB writes; 32 per GiB of image per 1% change scattered uniformly over the
# data (bench.sh's density), the rest in 16 hot 2 MiB zones (journal, metadata)
scattered = min(small, round(32 * size / 2**30 * pct))
for i in range(small):
    if i < scattered:
        o = pick(rng, 4096, True)
    else:
        o = rng.choice(zones) + rng.randrange(512) * 4096
    os.pwrite(fd, rng.randbytes(2048) + bytes([rng.randrange(256)]) * 2048, o)
    done += 4096
os.close(fd)
print(done)
EOF
logcmd python3 "$WORKDIR/tmp/mutate.py" "$IMG" "$SEED" NIGHT "$CHANGE_PCT"

# ------------------------------------------------------------ history
phase "history: $NIGHTS nightly backups ($TOOLS)"
have_tool cairn && run cairn-init "$CAIRN_BIN" init
have_tool restic && run restic-init restic init
logcmd "$CAIRN_BIN" backup --vm bench --time "2026-01-01T02:00:00Z" --json "$IMG"
logcmd restic backup --host bench --time "2026-01-01 02:00:00" "$IMG"
now() { date +%s.%N; }
CHANGED_TOTAL=0
save_copy() {   # save_copy N: keep repository + cache as they are after night N
    local t
    for t in ${TOOLS//,/ }; do
        mkdir -p "$WORKDIR/saved/$1"
        cp -a "$WORKDIR/repo/$t" "$WORKDIR/saved/$1/repo-$t"
        cp -a "$WORKDIR/cache/$t" "$WORKDIR/saved/$1/cache-$t"
        repo_bytes "$t" >"$WORKDIR/saved/$1/bytes-$t"
    done
}
for ((night = 1; night <= NIGHTS; night++)); do
    if (( night > 1 )); then
        c=$(python3 "$WORKDIR/tmp/mutate.py" "$IMG" "$SEED" "$night" "$CHANGE_PCT")
        CHANGED_TOTAL=$((CHANGED_TOTAL + c))
    fi
    day=$(date -u -d "2026-01-01 02:00:00 UTC + $((night - 1)) days" +%Y-%m-%d)
    if have_tool cairn; then
        t0=$(now)
        run "cairn-backup" "$CAIRN_BIN" backup --vm bench --time "${day}T02:00:00Z" --json "$IMG"
        printf '%s\tcairn\t%s\n' "$night" "$(awk -v a="$t0" -v b="$(now)" 'BEGIN{print b-a}')" >>"$HIST"
    fi
    if have_tool restic; then
        t0=$(now)
        run "restic-backup" restic backup --host bench --time "$day 02:00:00" "$IMG"
        printf '%s\trestic\t%s\n' "$night" "$(awk -v a="$t0" -v b="$(now)" 'BEGIN{print b-a}')" >>"$HIST"
    fi
    (( night % 10 == 0 )) && info "night $night done ($day)"
    if (( night == MID || night == NIGHTS )); then save_copy "$night"; fi
done
ALLOC1=$(alloc_bytes "$IMG")
info "history done: $((CHANGED_TOTAL / 1048576)) MiB changed in total; image allocated $ALLOC0 -> $ALLOC1"

# ------------------------------------------------------------ measurements
snap_count() {   # snapshots left in the work repository
    if [[ $1 == cairn ]]; then "$CAIRN_BIN" snapshots --json; else restic snapshots --json; fi |
        python3 -c 'import json,sys; j=json.load(sys.stdin); print(len(j["snapshots"] if isinstance(j, dict) else j))'
}
cairn_prune_note() {   # from cairn's --json (forget+prune or prune alone)
    python3 - "$1" <<'EOF' || true
import json, sys
j = json.load(open(sys.argv[1]))
f = j.get("forget")                          # forget --prune: {"forget": .., "prune": ..}
p = j["prune"] if "forget" in j else j       # prune alone: the report itself
s = []
if f:
    s.append("removed %d snapshots" % f["removed"])
if p:
    s.append("%d packs deleted, %d repacked into %d, %.1f MiB freed" % (p["packs_deleted"],
             p["packs_repacked"], p["packs_written"], p["bytes_freed"] / 2**20))
print(", ".join(s))
EOF
}
restic_prune_note() {
    { grep -hoE '^remove [0-9]+ snapshots' "$1" | sed 's/^remove/removed/' || true
      grep -hE '^(to repack|this removes|remaining):' "$1" | sed 's/  */ /g' || true
    } | paste -sd';' - | sed 's/;/; /g'
}

run_point() {   # run_point N TOOL
    local n=$1 t=$2 left
    rm -rf -- "$WORKDIR/repo/$t" "$WORKDIR/cache/$t"
    cp -a "$WORKDIR/saved/$n/repo-$t" "$WORKDIR/repo/$t"
    cp -a "$WORKDIR/saved/$n/cache-$t" "$WORKDIR/cache/$t"
    if [[ $t == cairn ]]; then
        measure "cairn-$n-forget" cairn "$n" "forget ${KEEP_RULES[*]} --prune" -- \
            "$CAIRN_BIN" forget "${KEEP_RULES[@]}" --prune --json
        left=$(snap_count cairn)
        note "$(cairn_prune_note "$LOGS/cairn-$n-forget.out")"
        note "$left snapshots left"
        measure "cairn-$n-prune" cairn "$n" "prune (again, separately)" -- "$CAIRN_BIN" prune --json
        note "$(cairn_prune_note "$LOGS/cairn-$n-prune.out")"
        logcmd "$CAIRN_BIN" check
        "$CAIRN_BIN" check >"$LOGS/cairn-$n-check.out" 2>&1 || die "cairn check failed after prune (log: $LOGS/cairn-$n-check.out)"
        note "cairn check ok"
    else
        measure "restic-$n-forget" restic "$n" "forget ${KEEP_RULES[*]} --prune" -- \
            restic forget "${KEEP_RULES[@]}" --prune
        left=$(snap_count restic)
        note "$(restic_prune_note "$LOGS/restic-$n-forget.out")"
        note "$left snapshots left"
        measure "restic-$n-prune" restic "$n" "prune (again, separately)" -- restic prune
        note "$(restic_prune_note "$LOGS/restic-$n-prune.out")"
    fi
    echo "$left" >"$WORKDIR/tmp/left-$n-$t"
}

for n in "$MID" "$NIGHTS"; do
    for t in ${TOOLS//,/ }; do
        [[ -n $t ]] || continue
        phase "$t: forget + prune on $n snapshots"
        attempt=1
        while :; do
            n0=$(wc -l <"$ROWS")
            wait_quiet
            run_point "$n" "$t"
            if contaminated_since "$n0" && (( attempt <= RETRIES )); then
                info "$t@$n: another process used the CPU during a step; redoing (attempt $((attempt + 1)))"
                head -n "$n0" "$ROWS" >"$ROWS.tmp" && mv "$ROWS.tmp" "$ROWS"
                attempt=$((attempt + 1))
                continue
            fi
            break
        done
        if (( attempt > 1 )); then
            awk -F'\t' -v OFS='\t' -v t="$t" -v n="$n" -v a="$attempt" \
                '$1 == t && $2 == n {$10 = ($10 == "" ? "" : $10 "; ") "attempt " a} {print}' \
                "$ROWS" >"$ROWS.tmp" && mv "$ROWS.tmp" "$ROWS"
        fi
        rm -rf -- "$WORKDIR/repo/$t" "$WORKDIR/cache/$t"
    done
    if have_tool cairn && have_tool restic; then
        [[ $(cat "$WORKDIR/tmp/left-$n-cairn") == "$(cat "$WORKDIR/tmp/left-$n-restic")" ]] ||
            info "WARNING: at $n snapshots cairn kept $(cat "$WORKDIR/tmp/left-$n-cairn"), restic $(cat "$WORKDIR/tmp/left-$n-restic")"
    fi
done

# ------------------------------------------------------------ report
phase "writing $OUT"
hist_line() {   # total and median backup wall of a tool over the history
    awk -F'\t' -v t="$1" '$2 == t {print $3}' "$HIST" | sort -g |
        awk '{a[NR] = $1; s += $1} END {if (NR) printf "%d backups in %.0f s (median %.2f s)", NR, s, a[int((NR + 1) / 2)]}'
}
{
    echo "# prune benchmark: $NIGHTS nightly snapshots of a ${SIZE_GIB} GiB VM image"
    echo
    echo "Run $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname): $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM; workdir $WORKDIR."
    echo
    echo '```sh'
    printf '%q ' "$0" --size-gib "$SIZE_GIB" --nights "$NIGHTS" --mid "$MID" --change-pct "$CHANGE_PCT" --workdir "$WORKDIR" --out "$OUT" --tools "$TOOLS" --seed "$SEED"; echo
    cat "$CMDS"
    echo '```'
    echo
    echo "- cairn: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && [[ -z $(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] || echo ' + uncommitted changes in src')$(have_tool cairn && echo ", binary $CAIRN_BIN_ORIG built $(date -u -r "$CAIRN_BIN_ORIG" +%H:%M:%SZ)"); $(restic version 2>/dev/null | head -n1)"
    echo "- Image: $(stat -c %s "$IMG") bytes raw, $((ALLOC0 / 1048576)) MiB allocated at night 1, $((ALLOC1 / 1048576)) MiB at night $NIGHTS; $((CHANGED_TOTAL / 1048576)) MiB rewritten over the $((NIGHTS - 1)) changes (~${CHANGE_PCT}% of the allocated data a night)."
    for t in ${TOOLS//,/ }; do
        [[ -n $t ]] || continue
        echo "- History, $t: $(hist_line "$t"); repository $(( $(cat "$WORKDIR/saved/$MID/bytes-$t") / 1048576 )) MiB after night $MID, $(( $(cat "$WORKDIR/saved/$NIGHTS/bytes-$t") / 1048576 )) MiB after night $NIGHTS (not idle-controlled)."
    done
    echo
    echo "| tool | snapshots | step | wall s | CPU s | other CPU s | peak RSS MiB | repo MiB before → after | notes |"
    echo "|---|---:|---|---:|---:|---:|---:|---|---|"
    awk -F'\t' '{ printf "| %s | %s | `%s` | %.2f | %.2f | %s | %.0f | %.1f → %.1f | %s |\n",
                  $1, $2, $3, $4, $5, $7, $6/1024, $8/1048576, $9/1048576, $10 }' "$ROWS"
    echo
    echo "Logs: $LOGS"
} >"$OUT"
echo
cat "$OUT"
phase "done: $OUT"
