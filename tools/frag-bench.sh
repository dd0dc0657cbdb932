#!/usr/bin/env bash
# frag-bench.sh -- does the newest snapshot stay fast to restore over a month of nightly
# backups?  Capping (`--rewrite-budget 5%`) against none (`--rewrite-budget 0`).
#
#   tools/frag-bench.sh [--size-gib 4] [--content-mib N] [--nights 30] [--rebuild-every 5]
#                       [--measure 1,10,20,30] [--nightly cbt|full] [--seed 1]
#                       [--capped-budget PCT]
#                       [--workdir /tmp/cairn-frag-bench] [--out frag-results.md]
#                       [--tree-dir DIR] [--no-build] [--cairn-bin PATH]
#                       [--quiet-wait SECS] [--night-wait SECS] [--retries N] [--quick]
#
# Needs root: every restore is timed from a cold page cache (`sync; echo 3 >
# /proc/sys/vm/drop_caches`, which empties the cache of the whole machine).
#
# --quick: a 1 GiB image with 600 MiB of content, 6 nights, a rebuild on night 4,
#   measured after nights 1 and 6 (a smoke test).
#
#   1. gen-tree.py content (--content-mib, default 60 % of the image; in --tree-dir,
#      default WORKDIR/tree, kept for the whole run) + mkimage.sh -> img/disk.img.
#   2. Two fresh repositories, capped (--rewrite-budget of --capped-budget, default
#      5%) and uncapped
#      (--rewrite-budget 0).  Every night both back up the same image (the order
#      alternates from night to night), with --time one day apart from 2026-01-01:
#        night 1           the first backup;
#        rebuild nights    every --rebuild-every nights from night 1 + that (6, 11, 16,
#                          21, 26 by default, so that the measured nights come after
#                          in-place nights): gen-tree.py's next generation (about 2 % of
#                          the file bytes changed) packed by a fresh mkimage.sh: a new
#                          filesystem layout, a new file (inode), read whole;
#        other nights      2..3 % of the allocated data rewritten in place with qemu-io,
#                          into file contents only (the blocks `e2image -r` copies, the
#                          ext4 metadata, are left alone): 85 % as 64 KiB..1 MiB extents
#                          of new data (half random, half text), 15 % as 4 KiB writes of
#                          new data and 8 KiB database-page rewrites (the page's bytes with
#                          a new header and a few row edits), 60 % of those in 16 hot
#                          2 MiB zones (the same zones until the next rebuild), the rest
#                          uniform; the change map is written from exactly those writes and
#                          the backup is `--changed-extents map.json` (--nightly cbt, the
#                          default) or a plain backup that reads the whole image (--nightly
#                          full).
#      The nightly backups are timed and idle-waited (up to --night-wait s, default 120)
#      but not redone: they build the history, the aims are about the restores.
#   3. After each --measure night, for each repository (order alternating): idle wait
#      (up to --quiet-wait s, default 600), `sync; echo 3 > /proc/sys/vm/drop_caches`,
#      then `cairn restore frag:latest --disk disk.img --target FILE` timed with GNU time
#      (redone, from a cold cache again, if other CPU > 0.5 s + 15 % of its wall time, up
#      to --retries times, default 2); the restored file is compared with the image
#      (cmp) and deleted; `cairn check --json` gives the newest snapshot's packs / reads /
#      read_bytes / data_bytes, and `du -sb` the repository size.  The repository, the
#      image and the restore target are all on the one disk of the workdir.  "Disk I/O"
#      records the device's sectors read and written during the restore (/proc/diskstats)
#      against the restore's own (GNU time %I/%O), so other processes' I/O shows.
#   4. markdown tables to --out and stdout, with the aims (capped run): after the last
#      night the newest snapshot restores within 1.25x the first snapshot's time and
#      reads at most 1.5x its bytes, for at most 5 % more repository than uncapped.
#
# The workdir is wiped at start (only if it is empty or was made by this script).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

SIZE_GIB=4
CONTENT=
NIGHTS=30
REBUILD=5
MEASURE=1,10,20,30
NIGHTLY=cbt
SEED=1
WORKDIR=/tmp/cairn-frag-bench
OUT=frag-results.md
TREE_DIR=
BUILD=1
CAIRN_BIN=
QUIET_WAIT=600
NIGHT_WAIT=120
RETRIES=2
QUICK=0
CAPPED_BUDGET=5%
ARGS=("$@")

usage() { sed -n '2,57p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --size-gib) SIZE_GIB=$2; shift 2 ;;
        --content-mib) CONTENT=$2; shift 2 ;;
        --nights) NIGHTS=$2; shift 2 ;;
        --rebuild-every) REBUILD=$2; shift 2 ;;
        --measure) MEASURE=$2; shift 2 ;;
        --nightly) NIGHTLY=$2; shift 2 ;;
        --seed) SEED=$2; shift 2 ;;
        --workdir) WORKDIR=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --tree-dir) TREE_DIR=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --cairn-bin) CAIRN_BIN=$2; BUILD=0; shift 2 ;;
        --quiet-wait) QUIET_WAIT=$2; shift 2 ;;
        --night-wait) NIGHT_WAIT=$2; shift 2 ;;
        --retries) RETRIES=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --capped-budget) CAPPED_BUDGET=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "frag-bench: unknown argument $1" >&2; usage 2 ;;
    esac
done
if (( QUICK )); then SIZE_GIB=1; CONTENT=600; NIGHTS=6; REBUILD=3; MEASURE=1,6; fi
CONTENT=${CONTENT:-$((SIZE_GIB * 1024 * 60 / 100))}
for v in "$SIZE_GIB" "$CONTENT" "$NIGHTS" "$REBUILD"; do
    [[ $v =~ ^[0-9]+$ && $v -ge 1 ]] || { echo "frag-bench: $v is not a positive integer" >&2; exit 2; }
done
[[ $NIGHTLY == cbt || $NIGHTLY == full ]] || { echo "frag-bench: --nightly is cbt or full" >&2; exit 2; }
IFS=, read -ra MEASURE_L <<<"$MEASURE"
for m in "${MEASURE_L[@]}"; do
    [[ $m =~ ^[0-9]+$ && $m -ge 1 && $m -le $NIGHTS ]] || { echo "frag-bench: --measure night $m is not in 1..$NIGHTS" >&2; exit 2; }
done
[[ ${MEASURE_L[0]} == 1 ]] || { echo "frag-bench: --measure must start with night 1 (the first snapshot is the reference)" >&2; exit 2; }
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
case $WORKDIR in /*) ;; *) WORKDIR=$PWD/$WORKDIR ;; esac
WORKDIR=${WORKDIR%/}

BENCH_NAME=frag-bench
# shellcheck source=tools/bench-lib.sh
source "$HERE/bench-lib.sh"   # phase, info, die, logcmd, run, busy_ticks, wait_quiet, prepare_cairn

# ------------------------------------------------------------ root: cold-cache restores
if [[ $EUID -ne 0 ]]; then
    die "must run as root: each restore is timed from a cold page cache, which needs
    'sync; echo 3 > /proc/sys/vm/drop_caches' (run it with sudo, or as root)"
fi
[[ -w /proc/sys/vm/drop_caches ]] ||
    die "/proc/sys/vm/drop_caches is not writable here (a container without it?); cold-cache restores cannot be measured"
for t in python3 qemu-io sfdisk mkfs.ext4 e2fsck e2image cmp du df; do
    command -v "$t" >/dev/null || die "$t not found (tools/install-deps.sh)"
done
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) not found: apt-get install time"

# ------------------------------------------------------------ workdir
[[ -n $WORKDIR && $WORKDIR != / && $WORKDIR != "$HOME" && $WORKDIR != "$ROOT" ]] ||
    die "refusing to use $WORKDIR as workdir"
if [[ -e $WORKDIR ]]; then
    if [[ -n $(ls -A "$WORKDIR") && ! -e $WORKDIR/.cairn-frag-bench ]]; then
        die "$WORKDIR is not empty and was not made by frag-bench.sh; remove it or pick another --workdir"
    fi
    phase "wiping workdir $WORKDIR"
    rm -rf -- "$WORKDIR"
fi
mkdir -p "$WORKDIR"/{img,repo,cache,logs,tmp,restore}
touch "$WORKDIR/.cairn-frag-bench"
LOGS=$WORKDIR/logs
CMDS=$WORKDIR/commands.txt
NIGHTS_TSV=$WORKDIR/nights.tsv     # night kind repo wall cpu other name change_desc
RESTORES=$WORKDIR/restores.tsv     # night repo wall cpu rss other attempt cmp own_io_mib dev_io_mib name
FRAG=$WORKDIR/frag.tsv             # night repo snapshot data_bytes packs reads read_bytes repo_bytes
LIMITS=$WORKDIR/limits.tsv         # what wall bytes
: >"$CMDS"; : >"$NIGHTS_TSV"; : >"$RESTORES"; : >"$FRAG"; : >"$LIMITS"
export CAIRN_PASSWORD=bench
unset CAIRN_PASSWORD_FILE CAIRN_REPOSITORY CAIRN_CACHE_DIR || true
echo "export CAIRN_PASSWORD=bench   # every command below names --repo and its own CAIRN_CACHE_DIR" >>"$CMDS"
REPOS=(capped uncapped)
declare -A BUDGET=([capped]="${CAPPED_BUDGET:+--rewrite-budget $CAPPED_BUDGET}" [uncapped]="--rewrite-budget 0")
C() { local r=$1; shift; echo env "CAIRN_CACHE_DIR=$WORKDIR/cache/$r" "$CAIRN_BIN" --repo "$WORKDIR/repo/$r" "$@"; }

TREE=${TREE_DIR:-$WORKDIR/tree}
IMG=$WORKDIR/img/disk.img
avail=$(df -Pk "$WORKDIR" | awk 'NR==2 {print int($4/1024)}')
# the image, a restored copy, two repositories growing to about 1.5x the content each
need=$(( CONTENT * 2 + CONTENT * 3 + 1024 ))
if [[ $(df -P "$(dirname "$TREE")" 2>/dev/null | awk 'NR==2 {print $1}') == $(df -P "$WORKDIR" | awk 'NR==2 {print $1}') ]]; then
    need=$(( need + CONTENT ))
fi
info "${avail} MiB free in $WORKDIR, about ${need} MiB needed"
(( avail >= need )) || die "not enough room (${avail} MiB free, ~${need} MiB needed); use a smaller --size-gib/--content-mib"
DISK_DEV=$(basename "$(df -P "$WORKDIR" | awk 'NR==2 {print $1}')")
grep -qw "$DISK_DEV" /proc/diskstats || DISK_DEV=
prepare_cairn

# ------------------------------------------------------------ the nightly write planner
PLAN=$WORKDIR/frag-plan.py
cat >"$PLAN" <<'EOF'
"""IMG META SEED NIGHT LAYOUT DIR: plan one night's in-place change of IMG (2..3 % of its
allocated data, in file contents: META is `e2image -r` of its filesystem, whose blocks are
left alone), write DIR/qemu-io.cmds (data in DIR/w/) and DIR/map.json, print a summary."""
import bisect, json, math, os, random, sys

K = 1024
WORDS = ("the disk image backup chunk server kernel request latency user session "
         "commit page index vacuum checkpoint replica").split()

def extents(path):
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    ext, pos = [], 0
    while pos < size:
        try:
            d = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break
        h = os.lseek(fd, d, os.SEEK_HOLE)
        ext.append((d, h - d))
        pos = h
    os.close(fd)
    return size, ext

def minus(ext, m):
    out, k = [], 0
    for d, l in ext:
        s, e = d, d + l
        while k < len(m) and m[k][1] <= s:
            k += 1
        j = k
        while s < e:
            if j < len(m) and m[j][0] < e:
                if m[j][0] > s:
                    out.append((s, m[j][0] - s))
                s = max(s, m[j][1])
                j += 1
            else:
                out.append((s, e - s))
                break
    return out

def text(rng, n):
    out, L = [], 0
    while L < n:
        s = "%d %s %s %s\n" % (rng.getrandbits(40), rng.choice(WORDS), rng.choice(WORDS),
                               rng.getrandbits(20))
        out.append(s); L += len(s)
    return "".join(out).encode()[:n]

def new_data(rng, n):
    return rng.randbytes(n) if rng.random() < 0.5 else text(rng, n)

img, meta, seed, night, layout, d = sys.argv[1:7]
rng = random.Random(f"cairn-frag-bench/{seed}/night/{night}")
zrng = random.Random(f"cairn-frag-bench/{seed}/zones/{layout}")
size, alloc = extents(img)
_, m = extents(meta)
ext = minus(alloc, [(o + (1 << 20), o + (1 << 20) + l) for o, l in m])
data = sum(l for _, l in alloc)
writable = sum(l for _, l in ext)
pct = rng.uniform(2.0, 3.0)
budget = int(data * pct / 100)
lo, hi = 1 << 20, size - (1 << 20)
cum = [0]
for _, l in ext:
    cum.append(cum[-1] + l)
starts, ends = [], []
def free(o, n):
    i = bisect.bisect_right(starts, o)
    if i > 0 and ends[i - 1] > o:
        return False
    return not (i < len(starts) and starts[i] < o + n)
def add(o, n):
    i = bisect.bisect_right(starts, o)
    starts.insert(i, o); ends.insert(i, o + n)
def place(r, n, align, min_n):
    k = bisect.bisect_right(cum, r) - 1
    e0, el = ext[k]
    o = e0 + (r - cum[k])
    o -= o % align
    o = max(o, e0 + (-e0) % align, lo)
    m_ = min(n, e0 + el - o, hi - o)
    m_ -= m_ % align
    if m_ >= min_n and free(o, m_):
        return o, m_
    return None
def pick(n, align, min_n, r_lo=0, r_hi=None):
    for _ in range(200):
        r = rng.randrange(r_lo, r_hi if r_hi is not None else writable)
        p = place(r, n, align, min_n)
        if p:
            return p
    return None
zones = [zrng.randrange(max(1, writable - (2 << 20))) for _ in range(16)]
fd = os.open(img, os.O_RDONLY)
writes = []
done, ext_budget = 0, budget * 85 // 100
while done < ext_budget:
    n = int(math.exp(rng.uniform(math.log(64 * K), math.log(1024 * K))))
    n = min(n, ext_budget - done); n -= n % (4 * K)
    if n < 4 * K:
        break
    p = pick(n, 4 * K, min(n, 16 * K))
    if p is None:
        break
    o, l = p
    add(o, l); writes.append((o, l, "extent", new_data(rng, l))); done += l
small = budget - done
nsmall = 0
while small > 0:
    page = rng.random() < 0.5
    n = 8 * K if page else 4 * K
    if rng.random() < 0.6:
        z = rng.choice(zones)
        p = pick(n, n, n, z, min(z + (2 << 20), writable))
    else:
        p = pick(n, n, n)
    if p is None:
        small -= n
        continue
    o, l = p
    if page:
        b = bytearray(os.pread(fd, l, o))
        b[0:24] = rng.randbytes(24)
        for _ in range(rng.randint(1, 4)):
            ln = rng.randint(32, 256)
            at = rng.randrange(24, l - ln)
            b[at:at + ln] = rng.randbytes(ln)
        payload = bytes(b)
    else:
        payload = new_data(rng, l)
    add(o, l); writes.append((o, l, "page" if page else "4k", payload))
    small -= l; nsmall += 1
os.close(fd)
rng.shuffle(writes)
os.makedirs(os.path.join(d, "w"), exist_ok=True)
cmds = []
for i, (o, l, _, b) in enumerate(writes):
    p = os.path.join(d, "w", f"{i:06d}.bin")
    open(p, "wb").write(b)
    cmds.append(f"write -q -s {p} {o} {l}")
open(os.path.join(d, "qemu-io.cmds"), "w").write("\n".join(cmds) + "\n")
json.dump([{"offset": o, "length": l} for o, l, _, _ in writes], open(os.path.join(d, "map.json"), "w"))
changed = sum(l for _, l, _, _ in writes)
kinds = {}
for _, l, k, _ in writes:
    kinds.setdefault(k, [0, 0]); kinds[k][0] += 1; kinds[k][1] += l
print(json.dumps({"changed": changed, "data": data, "pct": round(100 * changed / data, 2),
                  "writes": len(writes),
                  "kinds": {k: {"n": v[0], "bytes": v[1]} for k, v in kinds.items()}}))
EOF

# ------------------------------------------------------------ helpers
jget() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }
dev_sectors() {   # sectors read + written on the workdir's disk so far
    # printf, not print: mawk prints sums above 2^31 as 3.58247e+09, which bash cannot subtract
    if [[ -n $DISK_DEV ]]; then awk -v d="$DISK_DEV" '$3 == d {printf "%.0f\n", $6 + $10}' /proc/diskstats; else echo 0; fi
}
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
night_date() { date -u -d "2026-01-01 +$(( $1 - 1 )) days" +%F; }

# timed NAME -- CMD...: GNU time; sets T_WALL T_CPU T_RSS T_OTHER T_IO (own MiB) T_DEV (device MiB)
timed() {
    local name=$1; shift
    [[ $1 == -- ]] && shift
    logcmd "$@"
    local tf=$LOGS/$name.time b0 b1 s0 s1 user sys fin fout
    b0=$(busy_ticks); s0=$(dev_sectors)
    if ! /usr/bin/time -f '%e %U %S %M %I %O' -o "$tf" -- "$@" </dev/null \
            >"$LOGS/$name.out" 2>"$LOGS/$name.err"; then
        echo "frag-bench: command failed: $*" >&2
        tail -n 20 "$LOGS/$name.err" >&2 || true
        exit 1
    fi
    b1=$(busy_ticks); s1=$(dev_sectors)
    read -r T_WALL user sys T_RSS fin fout < <(tail -n1 "$tf")
    T_CPU=$(awk -v u="$user" -v s="$sys" 'BEGIN{printf "%.2f", u+s}')
    T_OTHER=$(awk -v d=$((b1 - b0)) -v hz="$HZ" -v c="$T_CPU" 'BEGIN{o = d/hz - c; printf "%.2f", (o < 0 ? 0 : o)}')
    T_IO=$(awk -v i="$fin" -v o="$fout" 'BEGIN{printf "%.0f", (i + o) * 512 / 1048576}')
    T_DEV=$(awk -v d=$((s1 - s0)) 'BEGIN{printf "%.0f", d * 512 / 1048576}')
}

# ------------------------------------------------------------ night 1: the image
phase "content (gen-tree.py, $CONTENT MiB, seed $SEED) and the ${SIZE_GIB} GiB image"
if [[ -e $TREE && -n $(ls -A "$TREE") && ! -e $TREE/.gen-tree.json ]]; then
    die "$TREE exists and is not a gen-tree.py tree; pick another --tree-dir"
fi
rm -rf -- "$TREE"
GEN=0
logcmd python3 "$HERE/gen-tree.py" "$TREE" --size-mib "$CONTENT" --seed "$SEED"
python3 "$HERE/gen-tree.py" "$TREE" --size-mib "$CONTENT" --seed "$SEED" >"$LOGS/gen-tree-0.out" 2>&1
logcmd "$HERE/mkimage.sh" "$IMG" "${SIZE_GIB}G" "$TREE"
"$HERE/mkimage.sh" "$IMG" "${SIZE_GIB}G" "$TREE" >"$LOGS/mkimage-0.out" 2>&1
for r in "${REPOS[@]}"; do
    run "init-$r" $(C "$r" init)
    mkdir -p "$WORKDIR/cache/$r"
done

is_measure() { local m; for m in "${MEASURE_L[@]}"; do [[ $m == "$1" ]] && return 0; done; return 1; }
is_rebuild() { (( $1 > 1 && ($1 - 1) % REBUILD == 0 )); }

measure_restores() {   # measure_restores NIGHT
    local n=$1 order=("${REPOS[@]}") r attempt snap t
    if (( n / 10 % 2 )); then order=(uncapped capped); fi
    for r in "${order[@]}"; do
        attempt=1
        while :; do
            rm -f -- "$WORKDIR/restore/disk.img"
            wait_quiet
            drop_caches
            timed "restore-$n-$r-$attempt" -- $(C "$r" restore frag:latest --disk disk.img --target "$WORKDIR/restore/disk.img")
            info "night $n $r: restore ${T_WALL}s (cpu ${T_CPU}s, other cpu ${T_OTHER}s, own I/O ${T_IO} MiB, device I/O ${T_DEV} MiB)"
            if awk -v w="$T_WALL" -v o="$T_OTHER" 'BEGIN{exit !(o > 0.5 + 0.15 * w)}' && (( attempt <= RETRIES )); then
                info "restore disturbed by other processes; redoing it from a cold cache"
                attempt=$((attempt + 1)); continue
            fi
            break
        done
        local same=identical
        cmp -s "$WORKDIR/restore/disk.img" "$IMG" || { same=DIFFERS; info "WARNING: restored image differs from disk.img"; }
        rm -f -- "$WORKDIR/restore/disk.img"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$r" "$T_WALL" "$T_CPU" "$T_RSS" \
            "$T_OTHER" "$attempt" "$same" "$T_IO" "$T_DEV" "restore-$n-$r-$attempt" >>"$RESTORES"
        run "check-$n-$r" $(C "$r" check --json)
        snap=$(jget "$LOGS/backup-$n-$r.out" 'j["snapshot"][:8]')
        python3 - "$LOGS/check-$n-$r.out" "$snap" "$n" "$r" "$(du -sb "$WORKDIR/repo/$r" | cut -f1)" >>"$FRAG" <<'EOF'
import json, sys
chk, snap, n, r, size = sys.argv[1:6]
j = json.load(open(chk))
f = {x["snapshot"]: x for x in j["fragmentation"]}[snap]
print("\t".join(map(str, [n, r, snap, f["data_bytes"], f["packs"], f["reads"], f["read_bytes"],
                          size, len(j["problems"]), j["packs"]])))
EOF
        info "night $n $r: $(tail -n1 "$FRAG" | cut -f3-)"
    done
}

# ------------------------------------------------------------ the nights
for ((n = 1; n <= NIGHTS; n++)); do
    T="$(night_date "$n")T02:00:00Z"
    MAPARG=()
    if (( n == 1 )); then
        kind=first desc="gen-tree generation 0"
    elif is_rebuild "$n"; then
        kind=rebuild
        GEN=$((GEN + 1))
        phase "night $n: rebuilt filesystem (gen-tree.py generation $GEN + mkimage.sh)"
        logcmd python3 "$HERE/gen-tree.py" "$TREE" --size-mib "$CONTENT" --seed "$SEED" --generation "$GEN"
        python3 "$HERE/gen-tree.py" "$TREE" --size-mib "$CONTENT" --seed "$SEED" --generation "$GEN" >"$LOGS/gen-tree-$GEN.out" 2>&1
        logcmd "$HERE/mkimage.sh" "$IMG" "${SIZE_GIB}G" "$TREE"
        "$HERE/mkimage.sh" "$IMG" "${SIZE_GIB}G" "$TREE" >"$LOGS/mkimage-$GEN.out" 2>&1
        desc="gen-tree generation $GEN, new filesystem: $(tail -n1 "$LOGS/gen-tree-$GEN.out" | sed 's/^\[gen-tree\] //')"
    else
        kind=in-place
        phase "night $n: ~2-3% rewritten in place (qemu-io)"
        ND=$WORKDIR/tmp/night
        rm -rf -- "$ND"; mkdir -p "$ND"
        run "e2image-$n" e2image -r -o 1048576 "$IMG" "$ND/meta.raw"
        logcmd python3 "$PLAN" "$IMG" "$ND/meta.raw" "$SEED" "$n" "$GEN" "$ND"
        python3 "$PLAN" "$IMG" "$ND/meta.raw" "$SEED" "$n" "$GEN" "$ND" >"$LOGS/plan-$n.json"
        logcmd qemu-io -f raw "$IMG" "<" "$ND/qemu-io.cmds"
        qemu-io -f raw "$IMG" <"$ND/qemu-io.cmds" >"$LOGS/qemu-io-$n.out" 2>&1 ||
            die "qemu-io failed (log: $LOGS/qemu-io-$n.out)"
        if grep -qiE 'error|failed|invalid' "$LOGS/qemu-io-$n.out"; then
            die "qemu-io reported errors (log: $LOGS/qemu-io-$n.out)"
        fi
        rm -rf -- "$ND/w" "$ND/meta.raw"
        cp -- "$ND/map.json" "$LOGS/map-$n.json"
        desc=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print("%.2f %% (%.1f MiB) in %d writes: %s" % (j["pct"], j["changed"]/2**20, j["writes"], ", ".join("%s %d" % (k, v["n"]) for k, v in j["kinds"].items())))' "$LOGS/plan-$n.json")
        if [[ $NIGHTLY == cbt ]]; then MAPARG=(--changed-extents "$LOGS/map-$n.json"); fi
    fi
    info "night $n ($kind): $desc"
    order=("${REPOS[@]}")
    if (( n % 2 == 0 )); then order=(uncapped capped); fi
    for r in "${order[@]}"; do
        wait_quiet_saved=$QUIET_WAIT; QUIET_WAIT=$NIGHT_WAIT
        wait_quiet
        QUIET_WAIT=$wait_quiet_saved
        cat "$IMG" >/dev/null
        # shellcheck disable=SC2086
        timed "backup-$n-$r" -- $(C "$r" backup --vm frag --time "$T" --json ${BUDGET[$r]} "${MAPARG[@]}" "$IMG")
        if (( ${#MAPARG[@]} )) && [[ $(jget "$LOGS/backup-$n-$r.out" '"changed_blocks" in j["items"][0]') != True ]]; then
            die "night $n $r: the change map was not used: $(jget "$LOGS/backup-$n-$r.out" 'j["warnings"]')"
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$kind" "$r" "$T_WALL" "$T_CPU" "$T_OTHER" \
            "backup-$n-$r" "$desc" >>"$NIGHTS_TSV"
        info "night $n $r: backup ${T_WALL}s, stored $(jget "$LOGS/backup-$n-$r.out" 'round(j["bytes_stored"]/2**20,1)') MiB, rewritten $(jget "$LOGS/backup-$n-$r.out" 'round(j["bytes_rewritten"]/2**20,1)') MiB (other cpu ${T_OTHER}s)"
    done
    if (( n == 1 )); then
        # what the disk gives: the image and a repository read cold, sequentially
        wait_quiet; drop_caches
        timed "cold-cat-image" -- sh -c 'cat "$1" >/dev/null' sh "$IMG"
        printf '%s\t%s\t%s\n' "cold cat of the image (its allocated data)" "$T_WALL" \
            "$(( $(stat -c %b "$IMG") * $(stat -c %B "$IMG") ))" >>"$LIMITS"
        wait_quiet; drop_caches
        timed "cold-cat-repo" -- sh -c 'find "$1" -type f -exec cat {} + >/dev/null' sh "$WORKDIR/repo/capped"
        printf '%s\t%s\t%s\n' "cold cat of the capped repository's files" "$T_WALL" \
            "$(du -sb "$WORKDIR/repo/capped" | cut -f1)" >>"$LIMITS"
    fi
    if is_measure "$n"; then
        phase "night $n: cold restores of the newest snapshot"
        measure_restores "$n"
    fi
done
rm -rf -- "$TREE"

# ------------------------------------------------------------ report
phase "writing $OUT"
python3 - "$NIGHTS_TSV" "$RESTORES" "$FRAG" "$LIMITS" "$LOGS" "$NIGHTS" >"$WORKDIR/tables.md" <<'EOF'
import json, statistics, sys
nights_p, rest_p, frag_p, lim_p, logs, N = sys.argv[1:7]
N = int(N)
MiB = 2**20
T = lambda p: [l.rstrip("\n").split("\t") for l in open(p) if l.strip()]
nights, rest, frag, lim = T(nights_p), T(rest_p), T(frag_p), T(lim_p)
out = []
P = out.append
fr = {(int(f[0]), f[1]): f for f in frag}
rs = {(int(r[0]), r[1]): r for r in rest}
P("| after night | repository | restore s (cold) | MB/s of data | restore CPU s | other CPU s | device I/O MiB (own) | packs | reads | read MiB | read / data | repository MiB | restored = image |")
P("|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|")
for (n, r) in sorted(rs, key=lambda k: (k[0], k[1] != "capped")):
    x, f = rs[(n, r)], fr[(n, r)]
    data = int(f[3])
    att = "" if x[6] == "1" else f" (attempt {x[6]})"
    P(f"| {n} | {r} | {float(x[2]):.2f}{att} | {data / float(x[2]) / 1e6:.0f} | {float(x[3]):.2f} | {x[5]} | {x[9]} ({x[8]}) | "
      f"{f[4]} | {f[5]} | {int(f[6]) / MiB:.1f} | {int(f[6]) / data:.3f} | {int(f[7]) / MiB:.1f} | {x[7]} |")
P("")
last = max(n for n, _ in rs)
def ratio(r, col, n1=1, n2=last):
    a, b = (rs if col < 0 else fr)[(n1, r)], (rs if col < 0 else fr)[(n2, r)]
    i = 2 if col < 0 else col
    return float(b[i]) / float(a[i])
aims = []
for r in ("capped", "uncapped"):
    t = ratio(r, -1); b = ratio(r, 6)
    aims.append((r, f"newest after night {last} restores within 1.25× of the first snapshot's time", f"{t:.2f}×", t <= 1.25))
    aims.append((r, f"… and reads at most 1.5× its bytes", f"{b:.2f}×", b <= 1.5))
rep = int(fr[(last, "capped")][7]) / int(fr[(last, "uncapped")][7])
P("| run | aim | measured | met? |")
P("|---|---|---:|---|")
for r, a, m, ok in aims:
    P(f"| {r} | {a} | {m} | {'yes' if ok else '**no**'} |")
P(f"| capped vs uncapped | repository at most 5 % larger after night {last} | {100 * (rep - 1):+.1f} % | {'yes' if rep <= 1.05 else '**no**'} |")
P("")
# the nightly history
def js(name):
    return json.load(open(f"{logs}/{name}.out"))
P("| nights | kind | repository | backups | wall s (sum) | other CPU s (max) | read MiB | stored MiB | rewritten MiB | fetched from repo MiB |")
P("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
for kind in ("first", "in-place", "rebuild"):
    for r in ("capped", "uncapped"):
        rows = [x for x in nights if x[1] == kind and x[2] == r]
        if not rows:
            continue
        j = [js(x[6]) for x in rows]
        fp = sum((it.get("changed_blocks") or {}).get("bytes_from_parent", 0) for y in j for it in y["items"])
        ns = [int(x[0]) for x in rows]
        span = f"{ns[0]}" if len(ns) == 1 else f"{len(ns)} nights ({ns[0]}–{ns[-1]})"
        P(f"| {span} | {kind} | {r} | {len(rows)} | {sum(float(x[3]) for x in rows):.1f} | "
          f"{max(float(x[5]) for x in rows):.1f} | {sum(y['bytes_read'] for y in j) / MiB:.0f} | "
          f"{sum(y['bytes_stored'] for y in j) / MiB:.1f} | {sum(y['bytes_rewritten'] for y in j) / MiB:.1f} | {fp / MiB:.1f} |")
P("")
for w, wall, b in lim:
    P(f"- {w}: {float(wall):.2f} s for {int(b) / MiB:.0f} MiB = {int(b) / float(wall) / 1e6:.0f} MB/s")
print("\n".join(out))
EOF
{
    echo "# cairn fragmentation benchmark: ${NIGHTS} nights of one ${SIZE_GIB} GiB VM image"
    echo
    echo "Run $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname): $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r); workdir $WORKDIR ($(df -T "$WORKDIR" | awk 'NR==2 {print $2}'), device ${DISK_DEV:-?}): repositories, image and restore target on the same disk."
    echo
    echo '```sh'
    printf '%q ' "$0" "${ARGS[@]}"; echo
    cat "$CMDS"
    echo '```'
    echo
    echo "- cairn: tree $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && [[ -z $(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] || echo ' + uncommitted changes in src'), binary $CAIRN_BIN_ORIG built $(date -u -r "$CAIRN_BIN_ORIG" +%H:%M:%SZ), run from a copy; $(qemu-io --version | head -n1)."
    echo "- Image: ${SIZE_GIB} GiB sparse raw GPT + ext4, $CONTENT MiB of gen-tree.py content (seed $SEED); rebuilt every $REBUILD nights from night $((1 + REBUILD)); in-place nights backed up with $([[ $NIGHTLY == cbt ]] && echo '`--changed-extents` (the map of exactly the writes)' || echo 'a full read (no map)')."
    echo "- Restores: \`sync; echo 3 > /proc/sys/vm/drop_caches\` first (cold: the repository's packs, the index cache and the binary come from disk); MB/s of data = the snapshot's data bytes / wall; 'read MiB' etc. from \`cairn check --json\` (fragmentation of the newest snapshot: stored bytes a restore reads, gaps included)."
    echo
    cat "$WORKDIR/tables.md"
    echo
    echo "Nights:"
    echo
    awk -F'\t' '$3 == "capped" {printf "- %s (%s): %s\n", $1, $2, $8}' "$NIGHTS_TSV"
    echo
    echo "Logs: $LOGS"
} >"$OUT"
echo
cat "$OUT"
phase "done: $OUT"
