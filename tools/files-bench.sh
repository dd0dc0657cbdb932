#!/usr/bin/env bash
# files-bench.sh -- file-level restore: ls, dump, restore --path and find, against
# the way an admin does it without them (restore the whole disk, loop-mount, cp).
#
#   tools/files-bench.sh [--quick] [--workdir /tmp/cairn-files-bench]
#                        [--out files-results.md] [--reps 5] [--seed 1]
#                        [--no-build] [--cairn-bin PATH] [--quiet-wait SECS]
#                        [--retries N] [--keep]
#
# Needs root (loop devices and mounts: the admin's way, and the nightly changes
# of the find history), losetup, partx, mount, GNU time, sfdisk, mkfs.ext4.
#
# Phases:
#   1. cargo build --release (skipped with --no-build / --cairn-bin); cairn runs
#      from a copy in the workdir, so a rebuild meanwhile cannot swap it.
#   2. Content: gen-tree.py (seed S, 1100 MiB: real /usr files, logs, documents,
#      random data) plus, at fixed paths:
#        /srv/app                           a second gen-tree.py tree of 200 MiB
#                                           (seed S-app, ~2500 files, mixed)
#        /home/deploy/mail                  400 mail files of 1-24 KiB (the ls -l)
#        /home/alice/docs/budget-2026.ods   1 MiB
#        /var/lib/db/orders.db              1 GiB
#      The two files are realistic, partly compressible: 35% random, 40% real
#      binary bytes from /usr and 25% log text (in 1 MiB / 64 KiB pieces, every
#      4 KiB perturbed so nothing dedups).  mkimage.sh makes disk0.img: a sparse
#      4 GiB raw disk, GPT + ext4 in partition 1, so paths in a snapshot are
#      /disk0.img/p1/<path>.
#   3. Catalog cost (6): one `cairn init`, copied for each of 3 pairs to "with" and
#      "without" repositories (same key and chunker seed, so the disk data is
#      chunked and stored identically and the size difference is the catalog);
#      per pair a first backup with and one with --no-catalog, then the same
#      again with --force-read (which goes first alternates between pairs).
#      catalog.{entries,bytes,secs} from --json.
#      The first "with" repository is the one measured below.
#   4. Steps 1-4, each --reps times (median, min, max), in that repository:
#        ls -l /disk0.img/p1/home/deploy/mail --stats
#        dump .../budget-2026.ods --stats > file          (cmp-checked)
#        dump .../orders.db --stats > file                (cmp-checked)
#        restore --path /disk0.img/p1/srv/app --target DIR --stats --json
#                                                          (diff -r-checked)
#      plus the large dump's RSS, sampled every 50 ms over one run (bounded?).
#      "fetched" = bytes the command read from the repository (--stats line, or
#      bytes_fetched of restore --json).  Peak RSS = GNU time %M.
#   5. The admin's way (5), --reps times: restore --disk disk0.img --target FILE,
#      losetup -P + mount -o ro,noload of partition 1, then ls -l / cp of the same
#      file / cp of the other file / cp -a of the directory, umount + losetup -d.
#      Each case's time = restore + mount + its own ls/cp + umount.  What it read
#      from the repository = the repository's data/ (du -sb).
#   6. find (7): 4 VMs x 25 nights.  Each VM is a 512 MiB GPT+ext4 image with a
#      240 MiB gen-tree.py tree (seed S-vmN, ~3000 files) and /etc/hostname.
#      Every night after the first, the image is loop-mounted read-write and a
#      few files change (two logs appended, a config rewritten, 256 KiB of a data
#      file overwritten in place, a document deleted, var/log/app/night-NN.log
#      created); then `cairn backup --vm vmN --time <night>`.  For vm1, each night
#      is also backed up with --no-catalog into a hard-linked copy of the
#      repository (packs are never modified in place, so that is safe): the size
#      difference is what the catalog added that night.  Then, --reps times:
#        find --name hostname                  (expect 100 matches)
#        find --name 'night-*.log'             (expect 4 x (0+1+...+24) = 1200)
#        find --vm vm1 --name hostname         (25 snapshots)
#      and, for contrast, find --name budget-2026.ods on the 4 GiB image with and
#      without catalog (without: the filesystem is walked through the repository).
#   7. markdown tables to --out and stdout; every command in the commands list.
#
# Other processes: as in BENCHMARKS.md Method.  Before each measured series the
# script waits (up to --quiet-wait s, default 300) until other processes use
# < 10% of one core over 3 s; every run records "other CPU" (whole-machine busy
# CPU from /proc/stat minus its own user+sys); a run (one command; one admin
# sequence; one pair of catalog backups, in fresh copies) whose other CPU was above
# 0.5 s + 15% of its wall time is discarded and redone after another wait, up to
# --retries times (default 3); a run still over the limit is kept and counted (for
# the admin's ls/cp through the loop device the limit differs: see over_limit).  The
# page cache is not dropped: the repository and the images are read once (cat)
# before the measurements, so these are warm-cache figures.
#
# --quick: a smoke run (1 GiB image, 150 MiB tree, 40 MiB directory, 128 MiB
# large file, 2 reps, 1 pair, 2 VMs x 3 nights of 256 MiB) in a few minutes.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

WORKDIR=/tmp/cairn-files-bench
OUT=files-results.md
REPS=
SEED=1
BUILD=1
CAIRN_BIN=
QUIET_WAIT=300
RETRIES=3
KEEP=0
QUICK=0

usage() { sed -n '2,77p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
ARGS=("$@")
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) QUICK=1; shift ;;
        --workdir) WORKDIR=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --seed) SEED=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --cairn-bin) CAIRN_BIN=$2; BUILD=0; shift 2 ;;
        --quiet-wait) QUIET_WAIT=$2; shift 2 ;;
        --retries) RETRIES=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "files-bench: unknown argument $1" >&2; usage 2 ;;
    esac
done
if (( QUICK )); then
    SIZE=1G TREE_MIB=150 DIR_MIB=40 BIG_MIB=128 LIST_N=400 PAIRS=1
    VMS=2 NIGHTS=3 VM_SIZE=256M VM_TREE_MIB=60
    REPS=${REPS:-2}
else
    SIZE=4G TREE_MIB=1100 DIR_MIB=200 BIG_MIB=1024 LIST_N=400 PAIRS=3
    VMS=4 NIGHTS=25 VM_SIZE=512M VM_TREE_MIB=240
    REPS=${REPS:-5}
fi
[[ $REPS =~ ^[0-9]+$ && $REPS -ge 1 ]] || { echo "files-bench: --reps must be an integer >= 1" >&2; exit 2; }
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
case $WORKDIR in /*) ;; *) WORKDIR=$PWD/$WORKDIR ;; esac
WORKDIR=${WORKDIR%/}
W=$WORKDIR

BENCH_NAME=files-bench
# shellcheck source=tools/bench-lib.sh
source "$HERE/bench-lib.sh"   # phase, info, die, logcmd, run, busy_ticks, wait_quiet, prepare_cairn

export PATH="$PATH:/sbin:/usr/sbin"
for t in python3 sfdisk mkfs.ext4 e2fsck losetup partx mount umount cmp diff du; do
    command -v "$t" >/dev/null || die "$t not found"
done
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) not found: apt-get install time"
(( EUID == 0 )) || die "needs root (loop devices and mounts)"

# ------------------------------------------------------------ workdir
[[ -n $W && $W != / && $W != "$HOME" && $W != "$ROOT" ]] || die "refusing to use $W as workdir"
if [[ -e $W ]]; then
    if [[ -n $(ls -A "$W") && ! -e $W/.cairn-files-bench ]]; then
        die "$W is not empty and was not made by files-bench.sh; remove it or pick another --workdir"
    fi
    grep -q " $W/" /proc/mounts && die "something is still mounted under $W"
    phase "wiping workdir $W"
    rm -rf -- "$W"
fi
mkdir -p "$W"/{img,src,repo,cache,logs,out,mnt,tmp,vm}
touch "$W/.cairn-files-bench"
LOGS=$W/logs
CMDS=$W/commands.txt
REPS_TSV=$W/reps.tsv     # series attempt rep key wall cpu rss_kib other fetched reads try
SERIES_TSV=$W/series.tsv # series runs_redone waited_s
DISCARDED=$W/discarded   # try ids of runs redone for other CPU
NIGHTS_TSV=$W/nights.tsv # vm night wall stored entries cat_bytes cat_secs duration read
TWIN_TSV=$W/twin.tsv     # night grow_with grow_without wall_with wall_without
CAT_TSV=$W/catalog.tsv   # pair kind(with/without) step(first/forced) wall stored repo_bytes entries bytes secs try
: >"$CMDS"; : >"$DISCARDED"; : >"$REPS_TSV"; : >"$SERIES_TSV"; : >"$NIGHTS_TSV"; : >"$TWIN_TSV"; : >"$CAT_TSV"
START_UTC=$(date -u +%Y-%m-%dT%H:%M:%SZ)
START_S=$SECONDS
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

export TZ=UTC CAIRN_PASSWORD=bench
unset CAIRN_PASSWORD_FILE || true
echo "# environment: every repository has its own cache folder (copies share a repository id)" >>"$CMDS"
echo "export TZ=UTC CAIRN_PASSWORD=bench" >>"$CMDS"
# use_repo NAME: point cairn at $W/repo/NAME with its own cache $W/cache/NAME
LAST_REPO=
use_repo() {
    export CAIRN_REPOSITORY=$W/repo/$1 CAIRN_CACHE_DIR=$W/cache/$1
    [[ $1 == "$LAST_REPO" ]] && return 0
    LAST_REPO=$1
    echo "export CAIRN_REPOSITORY=$CAIRN_REPOSITORY CAIRN_CACHE_DIR=$CAIRN_CACHE_DIR" >>"$CMDS"
}

# ------------------------------------------------------------ loop devices
# Loop devices this script attached, so the exit trap detaches exactly those.
LOOPS_FILE=$W/tmp/loops
: >"$LOOPS_FILE"
cat >"$W/tmp/attach.sh" <<'EOF'
#!/usr/bin/env bash
# attach.sh IMG MNT OPTS LOOPS_FILE: loop-attach IMG with partitions, mount partition 1
# on MNT with OPTS; prints the loop device.  If the kernel does not create the
# partition node (no udev), partx -a adds it, or mknod from sysfs.
set -euo pipefail
img=$1 mnt=$2 opts=$3 loops=$4
l=$(losetup -P -f --show "$img")
echo "$l" >>"$loops"
p=${l}p1
if [[ ! -b $p ]]; then partx -a "$l" 2>/dev/null || true; fi
for _ in $(seq 50); do [[ -b $p ]] && break; sleep 0.02; done
if [[ ! -b $p ]]; then
    d=/sys/block/${l#/dev/}/${l#/dev/}p1/dev
    [[ -r $d ]] || { echo "attach: no partition 1 on $l" >&2; exit 1; }
    IFS=: read -r ma mi <"$d"
    mknod "$p" b "$ma" "$mi"
    echo "$p" >>"$loops.nodes"
fi
mount -o "$opts" "$p" "$mnt"
echo "$l"
EOF
cat >"$W/tmp/detach.sh" <<'EOF'
#!/usr/bin/env bash
# detach.sh MNT LOOP: umount MNT, detach LOOP
set -euo pipefail
umount "$1"
losetup -d "$2"
EOF
chmod +x "$W/tmp/attach.sh" "$W/tmp/detach.sh"
cleanup() {
    local m l
    for m in $(awk -v w="$W/" 'index($2, w) == 1 {print $2}' /proc/mounts 2>/dev/null | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    if [[ -s $LOOPS_FILE ]]; then
        while read -r l; do
            losetup "$l" 2>/dev/null | grep -q "$W/" && losetup -d "$l" 2>/dev/null || true
        done <"$LOOPS_FILE"
    fi
    if [[ -s $LOOPS_FILE.nodes ]]; then
        while read -r l; do [[ -b $l ]] && rm -f -- "$l"; done <"$LOOPS_FILE.nodes"
    fi
    : >"$LOOPS_FILE"
}
trap cleanup EXIT
attach() { "$W/tmp/attach.sh" "$1" "$2" "$3" "$LOOPS_FILE"; }

# ------------------------------------------------------------ measuring
HZ=$(getconf CLK_TCK)
CUR_SERIES= CUR_ATTEMPT=0 CUR_REP=0 TRY=0
now_ns() { date +%s%N; }
# fetched_of ERRFILE: "BYTES READS" from cairn's --stats line ("fetched 1.24 MiB from the
# repository in 7 reads"), or "- -"
fetched_of() {
    awk '/^fetched .* from the repository in [0-9]+ reads/ {
            v = $2; u = $3; m = 1
            if (u == "KiB") m = 1024; else if (u == "MiB") m = 1048576
            else if (u == "GiB") m = 1073741824; else if (u == "TiB") m = 1099511627776
            printf "%.0f %s\n", v * m, $(NF - 1); found = 1 }
         END { if (!found) print "- -" }' "$1"
}
# tm KEY OUTFILE CMD...: run CMD (stdout to OUTFILE) under GNU time, append a row of the
# current series/attempt/rep to REPS_TSV; T_WALL etc. are left for the caller.
T_WALL=0
tm() {
    local key=$1 out=$2; shift 2
    local base=$LOGS/$CUR_SERIES-$key tf err
    tf=$base.time err=$base.err
    if (( CUR_REP == 1 && CUR_ATTEMPT == 1 )); then
        local s; printf -v s '%q ' "$@"; echo "${s% } > $out" >>"$CMDS"
    fi
    local b0 b1 t0 t1
    b0=$(busy_ticks); t0=$(now_ns)
    if ! /usr/bin/time -f '%U %S %M' -o "$tf" -- "$@" </dev/null >"$out" 2>"$err"; then
        echo "files-bench: command failed: $*" >&2
        tail -n 20 "$err" >&2 || true
        exit 1
    fi
    t1=$(now_ns); b1=$(busy_ticks)
    local user sys rss fetched reads
    read -r user sys rss < <(tail -n1 "$tf")
    read -r fetched reads < <(fetched_of "$err")
    T_WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", (b - a) / 1e9}')
    local cpu other
    cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN{printf "%.2f", u + s}')
    other=$(awk -v d=$((b1 - b0)) -v hz="$HZ" -v c="$cpu" 'BEGIN{o = d / hz - c; printf "%.2f", (o < 0 ? 0 : o)}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$CUR_SERIES" "$CUR_ATTEMPT" "$CUR_REP" "$key" \
        "$T_WALL" "$cpu" "$rss" "$other" "$fetched" "$reads" "$TRY" >>"$REPS_TSV"
    info "$CUR_SERIES/$key #$CUR_REP: wall ${T_WALL}s cpu ${cpu}s rss $((rss / 1024))MiB fetched $fetched other-cpu ${other}s"
}
# set the fetched bytes of the last row (for restore --json's exact bytes_fetched)
set_fetched() {
    awk -F'\t' -v OFS='\t' -v f="$1" '{ if (NR == n) $9 = f; print }' n="$(wc -l <"$REPS_TSV")" \
        "$REPS_TSV" >"$REPS_TSV.tmp" && mv "$REPS_TSV.tmp" "$REPS_TSV"
}
# over_limit TRY: true if the run's other CPU was above 0.5 s + 15% of its wall time.  In
# the admin's sequence, the parts reading through the loop device (ls, cp) are left out of
# that sum: the loop driver's kernel threads read the image for them, which /proc/stat
# counts as other CPU (up to one core while cp runs on the other); those parts count as
# disturbed only when their other CPU exceeds their wall time + 0.5 s (more than one
# core's worth).
LOOP_KEYS=" ls cp-1m cp-big cp-dir "
over_limit() {
    local k=$LOOP_KEYS
    [[ $CUR_SERIES == admin ]] || k=" "
    awk -F'\t' -v t="$1" -v k="$k" '$11 == t { if (index(k, " " $4 " ")) {lw += $5; lo += $8} else {w += $5; o += $8} }
        END {exit !(o > 0.5 + 0.15 * w || lo > lw + 0.5)}' "$REPS_TSV"
}
# series NAME FN [RUNS]: wait for a quiet machine, then run FN 1..RUNS (FN calls tm).  A run
# whose other CPU was above 0.5 s + 15% of its wall time is discarded and redone after
# another wait (up to RETRIES times; a run still over the limit then is kept, and shows).
series() {
    local name=$1 fn=$2 reps=${3:-$REPS} t0 waited=0 redone=0
    phase "series $name ($reps runs)"
    CUR_SERIES=$name
    t0=$SECONDS; wait_quiet; waited=$((SECONDS - t0))
    for ((CUR_REP = 1; CUR_REP <= reps; CUR_REP++)); do
        for ((CUR_ATTEMPT = 1; ; CUR_ATTEMPT++)); do
            TRY=$((TRY + 1))
            "$fn" "$CUR_REP"
            if over_limit "$TRY" && (( CUR_ATTEMPT <= RETRIES )); then
                echo "$TRY" >>"$DISCARDED"
                redone=$((redone + 1))
                info "$name run $CUR_REP: other processes used the CPU; redoing it"
                t0=$SECONDS; wait_quiet; waited=$((waited + SECONDS - t0))
                continue
            fi
            break
        done
    done
    printf '%s\t%s\t%s\n' "$name" "$redone" "$waited" >>"$SERIES_TSV"
}
json_get() {   # json_get FILE EXPR (python expression over j)
    python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); v=eval(sys.argv[2]); print("-" if v is None else v)' "$1" "$2"
}

# ------------------------------------------------------------ build
prepare_cairn
C=$CAIRN_BIN

# ------------------------------------------------------------ content
phase "generating content (gen-tree.py $TREE_MIB MiB seed $SEED + ${DIR_MIB} MiB directory + 1 MiB and ${BIG_MIB} MiB files + $LIST_N mails)"
TREE=$W/tree SRC=$W/src
cat >"$W/tmp/mkcontent.py" <<'EOF'
# mkcontent.py SRC SEED BIG_MIB LIST_N: the fixed-path files of files-bench.sh
import os, random, sys
src, seed, big_mib, list_n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(f"cairn-files-bench/{seed}")
MiB, KiB = 1 << 20, 1 << 10
WORDS = ("the disk image backup chunk server kernel request latency user session order "
         "invoice customer payment shipped pending total amount region quarter budget").split()
# pools: real binary bytes from /usr, log-like text
pool = bytearray()
cands = []
for d in ("/usr/lib", "/usr/bin"):
    for dp, dn, fn in os.walk(d):
        dn.sort()
        for f in sorted(fn):
            p = os.path.join(dp, f)
            try:
                if os.path.isfile(p) and not os.path.islink(p) and os.path.getsize(p) >= 256 * KiB:
                    cands.append(p)
            except OSError:
                pass
rng.shuffle(cands)
for p in cands:
    try:
        with open(p, "rb") as f:
            pool += f.read(4 * MiB)
    except OSError:
        continue
    if len(pool) >= 64 * MiB:
        break
if len(pool) < MiB:
    pool += rng.randbytes(8 * MiB)
lines, n, t = [], 0, 1767225600
while n < 8 * MiB:
    t += rng.randrange(1, 5000)
    s = "%d.%03d %s[%d]: %s %s id=%d amount=%d.%02d %s\n" % (
        t // 1000, t % 1000, rng.choice(WORDS), rng.randrange(1, 65536), rng.choice(WORDS),
        rng.choice(WORDS), rng.getrandbits(32), rng.randrange(100000), rng.randrange(100),
        " ".join(rng.choice(WORDS) for _ in range(rng.randrange(2, 9))))
    lines.append(s); n += len(s)
text = "".join(lines).encode()

def piece(n):
    r = rng.random()
    if r < 0.35:
        return rng.randbytes(n)
    p = pool if r < 0.75 else text
    buf = bytearray()
    while len(buf) < n:
        o = rng.randrange(len(p) - 1)
        buf += p[o:o + min(n - len(buf), 64 * KiB)]
    for b in range(0, n, 4096):           # unique every 4 KiB, compressibility kept
        q = b + rng.randrange(min(4096, n - b) - 7)
        buf[q:q + 8] = rng.randbytes(8)
    return bytes(buf)

def mixed(path, size, unit):
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(unit, left)
            f.write(piece(n))
            left -= n

mixed(os.path.join(src, "budget-2026.ods"), MiB, 64 * KiB)
mixed(os.path.join(src, "orders.db"), big_mib * MiB, MiB)
mail = os.path.join(src, "mail")
os.makedirs(mail, exist_ok=True)
for i in range(list_n):
    n = int(2 ** rng.uniform(10, 14.6))
    body = []
    while sum(map(len, body)) < n:
        body.append(" ".join(rng.choice(WORDS) for _ in range(rng.randrange(6, 14))) + "\n")
    hdr = "From: %s@example.com\nTo: deploy@example.com\nSubject: %s %d\n\n" % (
        rng.choice(WORDS), rng.choice(WORDS), i)
    with open(os.path.join(mail, "msg-%04d.eml" % i), "w") as f:
        f.write(hdr + "".join(body)[:n])
t0 = 1767225600
for root, dirs, files in os.walk(src):
    for x in files + dirs:
        os.utime(os.path.join(root, x), (t0, t0))
EOF
run gen-tree python3 "$HERE/gen-tree.py" "$TREE" --size-mib "$TREE_MIB" --seed "$SEED"
run gen-app python3 "$HERE/gen-tree.py" "$SRC/app" --size-mib "$DIR_MIB" --seed "$SEED-app"
run mkcontent python3 "$W/tmp/mkcontent.py" "$SRC" "$SEED" "$BIG_MIB" "$LIST_N"
mkdir -p "$TREE/srv" "$TREE/home/alice/docs" "$TREE/home/deploy" "$TREE/var/lib/db"
cp -al "$SRC/app" "$TREE/srv/app"
cp -al "$SRC/mail" "$TREE/home/deploy/mail"
ln "$SRC/budget-2026.ods" "$TREE/home/alice/docs/budget-2026.ods"
ln "$SRC/orders.db" "$TREE/var/lib/db/orders.db"
echo files-bench >"$TREE/etc/hostname"
logcmd "# plus (tools/files-bench.sh mkcontent.py): srv/app (gen-tree.py --size-mib $DIR_MIB --seed $SEED-app), home/deploy/mail ($LIST_N files), home/alice/docs/budget-2026.ods (1 MiB), var/lib/db/orders.db ($BIG_MIB MiB)"
IMG=$W/img/disk0.img
run mkimage "$HERE/mkimage.sh" "$IMG" "$SIZE" "$TREE"
rm -rf -- "$TREE"
IMG_BYTES=$(stat -c %s "$IMG")
IMG_ALLOC=$(( $(stat -c %b "$IMG") * $(stat -c %B "$IMG") ))
DIR_FILES=$(find "$SRC/app" -type f | wc -l)
DIR_BYTES=$(find "$SRC/app" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
BIG_BYTES=$(stat -c %s "$SRC/orders.db")
if command -v zstd >/dev/null; then
    for f in budget-2026.ods orders.db; do
        echo "$f $(stat -c %s "$SRC/$f") $(zstd -q -3 -T0 -c "$SRC/$f" | wc -c)" >>"$W/tmp/compress.txt"
    done
fi
info "image: $IMG_BYTES bytes, $IMG_ALLOC allocated; srv/app: $DIR_FILES files, $DIR_BYTES bytes"

P1=/disk0.img/p1
LS_PATH=$P1/home/deploy/mail
SMALL_PATH=$P1/home/alice/docs/budget-2026.ods
BIG_PATH=$P1/var/lib/db/orders.db
DIR_PATH=$P1/srv/app

# ------------------------------------------------------------ 6. catalog cost
phase "catalog cost: $PAIRS pair(s) of first backups with / without catalog, same key"
use_repo tmpl
run init "$C" init
logcmd "# per pair i (recreated when a run is redone): cp -a repo/tmpl repo/with\$i; cp -a repo/tmpl repo/without\$i (caches start empty)"
cat_backup() {   # cat_backup PAIR KIND STEP
    local i=$1 k=$2 step=$3 extra=()
    [[ $k == without ]] && extra+=(--no-catalog)
    [[ $step == forced ]] && extra+=(--force-read)
    use_repo "$k$i"
    cat "$IMG" >/dev/null
    tm "$k$i-$step" "$LOGS/catalog-$k$i-$step.json" "$C" backup --vm files --json "${extra[@]}" "$IMG"
    local j=$LOGS/catalog-$k$i-$step.json
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$i" "$k" "$step" "$T_WALL" \
        "$(json_get "$j" 'j["bytes_stored"]')" "$(du -sb "$W/repo/$k$i" | cut -f1)" \
        "$(json_get "$j" 'j["catalog"] and j["catalog"]["entries"]')" \
        "$(json_get "$j" 'j["catalog"] and j["catalog"]["bytes"]')" \
        "$(json_get "$j" 'j["catalog"] and j["catalog"]["secs"]')" "$TRY" >>"$CAT_TSV"
}
cat_pair() {     # one series run = one pair: first backups, then forced re-reads
    local i=$1 a=with b=without k
    for k in with without; do       # fresh copies of the same empty repository
        rm -rf -- "$W/repo/$k$i" "$W/cache/$k$i"
        cp -a "$W/repo/tmpl" "$W/repo/$k$i"
    done
    if (( i % 2 == 0 )); then a=without b=with; fi   # alternate which goes first
    cat_backup "$i" "$a" first; cat_backup "$i" "$b" first
    cat_backup "$i" "$a" forced; cat_backup "$i" "$b" forced
}
series catalog cat_pair "$PAIRS"
rm -rf -- "$W/repo/tmpl" "$W/cache/tmpl"
for ((i = 2; i <= PAIRS; i++)); do rm -rf -- "$W/repo/with$i" "$W/repo/without$i" "$W/cache/with$i" "$W/cache/without$i"; done
REPO_DATA=$(du -sb "$W/repo/with1/data" | cut -f1)
REPO_ALL=$(du -sb "$W/repo/with1" | cut -f1)
SNAP=files:latest

# ------------------------------------------------------------ 1-4. cairn
use_repo with1
find "$W/repo/with1" -type f -exec cat {} + >/dev/null      # warm, as the image was
s_ls() {
    tm ls "$W/out/ls.txt" "$C" ls "$SNAP" "$LS_PATH" -l --stats
    local n; n=$(wc -l <"$W/out/ls.txt")
    [[ $n == "$LIST_N" ]] || die "ls -l listed $n entries, expected $LIST_N (see $W/out/ls.txt)"
}
s_dump_small() {
    rm -f "$W/out/small"
    tm dump "$W/out/small" "$C" dump "$SNAP" "$SMALL_PATH" --stats
    cmp -s "$W/out/small" "$SRC/budget-2026.ods" || die "dump of the 1 MiB file differs from its source"
}
s_dump_big() {
    rm -f "$W/out/big"; sync
    tm dump "$W/out/big" "$C" dump "$SNAP" "$BIG_PATH" --stats
    cmp -s "$W/out/big" "$SRC/orders.db" || die "dump of the large file differs from its source"
    rm -f "$W/out/big"
}
s_restore_dir() {
    rm -rf "$W/out/dir"; mkdir -p "$W/out/dir"; sync
    tm restore "$W/out/restore.json" "$C" restore "$SNAP" --path "$DIR_PATH" --target "$W/out/dir" --stats --json
    set_fetched "$(json_get "$W/out/restore.json" 'j["bytes_fetched"]')"
    diff -r -q "$W/out/dir/app" "$SRC/app" >"$LOGS/restore-diff.txt" ||
        die "restore --path differs from the source directory (see $LOGS/restore-diff.txt)"
    rm -rf "$W/out/dir"
}
series ls-l s_ls
series dump-1m s_dump_small
series dump-big s_dump_big
# RSS over the large dump's run (sampled every 50 ms, output to /dev/null): flat = bounded
phase "RSS profile of the large dump"
logcmd "# RSS profile: $C dump $SNAP $BIG_PATH > /dev/null & sampling VmRSS of its pid every 50 ms"
"$C" dump "$SNAP" "$BIG_PATH" >/dev/null 2>"$LOGS/rss-profile.err" &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
    awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || true
    sleep 0.05
done >"$W/tmp/rss-profile"
wait "$pid" || die "dump for the RSS profile failed (log: $LOGS/rss-profile.err)"
series restore-dir s_restore_dir

# ------------------------------------------------------------ 5. the admin's way
s_admin() {
    local img=$W/out/disk0.img l
    rm -f "$img"; rm -rf "$W/out/adm"; mkdir -p "$W/out/adm"; sync
    tm full-restore "$LOGS/admin-restore.out" "$C" restore "$SNAP" --disk disk0.img --target "$img"
    tm mount "$W/tmp/loopdev" "$W/tmp/attach.sh" "$img" "$W/mnt" ro,noload "$LOOPS_FILE"
    l=$(cat "$W/tmp/loopdev")
    tm ls "$W/out/adm/ls.txt" ls -l "$W/mnt/home/deploy/mail"
    # cairn's listing must name the same files with the same sizes as the mounted filesystem's
    if ! diff <(awk 'NF > 2 {print $NF, $(NF - 3)}' "$W/out/ls.txt" | sort) \
              <(awk 'NF > 2 {print $NF, $5}' "$W/out/adm/ls.txt" | sort) >"$LOGS/ls-diff.txt"; then
        info "WARNING: cairn ls -l and ls -l of the mounted filesystem differ (see $LOGS/ls-diff.txt)"
    fi
    tm cp-1m /dev/null cp "$W/mnt/home/alice/docs/budget-2026.ods" "$W/out/adm/small"
    tm cp-big /dev/null cp "$W/mnt/var/lib/db/orders.db" "$W/out/adm/big"
    tm cp-dir /dev/null cp -a "$W/mnt/srv/app" "$W/out/adm/app"
    tm umount /dev/null "$W/tmp/detach.sh" "$W/mnt" "$l"
    cmp -s "$W/out/adm/small" "$SRC/budget-2026.ods" && cmp -s "$W/out/adm/big" "$SRC/orders.db" &&
        diff -r -q "$W/out/adm/app" "$SRC/app" >/dev/null || die "the admin's copies differ from the sources"
    rm -rf "$W/out/adm" "$img"
}
series admin s_admin

# ------------------------------------------------------------ 7. find over many snapshots
phase "find history: $VMS VMs x $NIGHTS nights ($VM_SIZE images, $VM_TREE_MIB MiB trees)"
for ((v = 1; v <= VMS; v++)); do
    run "vm$v-gen" python3 "$HERE/gen-tree.py" "$W/vm/tree$v" --size-mib "$VM_TREE_MIB" --seed "$SEED-vm$v"
    echo "vm$v" >"$W/vm/tree$v/etc/hostname"
    find "$W/vm/tree$v" -type f | wc -l >>"$W/tmp/vm-files"
    run "vm$v-mkimage" "$HERE/mkimage.sh" "$W/vm/vm$v.img" "$VM_SIZE" "$W/vm/tree$v"
    rm -rf -- "$W/vm/tree$v"
done
cat >"$W/tmp/night.py" <<'EOF'
# night.py MNT SEED VM NIGHT: a night's changes inside a mounted guest filesystem
import os, random, sys
mnt, seed, vm, night = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rng = random.Random(f"cairn-files-bench/{seed}/{vm}/{night}")
def files(sub, pred=lambda p: True):
    out = []
    for dp, dn, fn in os.walk(os.path.join(mnt, sub)):
        dn.sort()
        out += [os.path.join(dp, f) for f in sorted(fn) if pred(os.path.join(dp, f))]
    return out
W = "the disk image backup chunk server kernel request latency user session".split()
line = lambda: "%d %s[%d]: %s %s\n" % (1767225600 + night * 86400 + rng.randrange(86400),
                                        rng.choice(W), rng.randrange(65536), rng.choice(W), rng.choice(W))
logs = files("var/log", lambda p: p.endswith(".log") and "night-" not in p)
for p in rng.sample(logs, min(2, len(logs))):                # two logs appended
    with open(p, "a") as f:
        f.write("".join(line() for _ in range(rng.randrange(500, 2000))))
confs = files("etc", lambda p: p.endswith(".conf"))
if confs:                                                    # a config rewritten
    p = rng.choice(confs)
    with open(p, "w") as f:
        f.write("# night %d\n" % night + "".join("%s = %d\n" % (rng.choice(W), rng.randrange(1000)) for _ in range(40)))
data = files("var/lib", lambda p: os.path.getsize(p) > 1 << 20)
if data:                                                     # 256 KiB overwritten in place
    p = rng.choice(data)
    fd = os.open(p, os.O_WRONLY)
    os.pwrite(fd, rng.randbytes(256 << 10), rng.randrange(os.path.getsize(p) - (256 << 10)) & ~4095)
    os.close(fd)
docs = files("home", lambda p: "/docs/" in p)
if docs:                                                     # a document deleted
    os.unlink(rng.choice(docs))
os.makedirs(os.path.join(mnt, "var/log/app"), exist_ok=True)  # a new log
with open(os.path.join(mnt, "var/log/app/night-%02d.log" % night), "w") as f:
    f.write("".join(line() for _ in range(rng.randrange(200, 800))))
EOF
logcmd "# each night >= 2, per VM: tools/files-bench.sh attach.sh IMG MNT noinit_itable; python3 night.py MNT $SEED vmN NIGHT; umount; losetup -d"
use_repo find
run find-init "$C" init
night_time() { date -u -d "2026-01-01 02:00:00 UTC + $(($1 - 1)) days + $(($2 * 10)) minutes" +%Y-%m-%dT%H:%M:%SZ; }
logcmd "$C" backup --vm vmN --time "NIGHT_TIME" --json "$W/vm/vmN.img"
logcmd "# vm1 every night, before its real backup: cp -al repo/find repo/twin; cp -a cache/find cache/twin; CAIRN_REPOSITORY=repo/twin cairn backup --no-catalog ... (same --time)"
self_cpu() {   # user+sys CPU s of this shell and its waited-for children so far
    times >"$W/tmp/times"
    awk '{for (i = 1; i <= NF; i++) {split($i, a, "m"); sub("s", "", a[2]); s += a[1] * 60 + a[2]}}
         END {printf "%.2f", s}' "$W/tmp/times"
}
wait_quiet
HIST_T0=$SECONDS HIST_B0=$(busy_ticks) HIST_C0=$(self_cpu)
for ((night = 1; night <= NIGHTS; night++)); do
    for ((v = 1; v <= VMS; v++)); do
        img=$W/vm/vm$v.img
        if (( night > 1 )); then
            l=$(attach "$img" "$W/mnt" noinit_itable)
            python3 "$W/tmp/night.py" "$W/mnt" "$SEED" "vm$v" "$night" >>"$LOGS/night.log" 2>&1 ||
                die "night.py failed (log: $LOGS/night.log)"
            "$W/tmp/detach.sh" "$W/mnt" "$l"
        fi
        cat "$img" >/dev/null
        t=$(night_time "$night" "$v")
        if (( v == 1 )); then
            # twin: the same night without catalog, in a hard-linked copy of the repository
            before=$(du -sb "$W/repo/find" | cut -f1)
            rm -rf -- "$W/repo/twin" "$W/cache/twin"
            cp -al "$W/repo/find" "$W/repo/twin"
            if [[ -d $W/cache/find ]]; then cp -a "$W/cache/find" "$W/cache/twin"; fi
            t0=$(now_ns)
            CAIRN_REPOSITORY=$W/repo/twin CAIRN_CACHE_DIR=$W/cache/twin \
                "$C" backup --vm "vm$v" --time "$t" --no-catalog --json "$img" >"$LOGS/twin.json" 2>"$LOGS/twin.err" ||
                die "twin backup failed (log: $LOGS/twin.err)"
            t1=$(now_ns)
            grow_without=$(( $(du -sb "$W/repo/twin" | cut -f1) - before ))
            wall_without=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", (b - a) / 1e9}')
            rm -rf -- "$W/repo/twin" "$W/cache/twin"
            cat "$img" >/dev/null
        fi
        t0=$(now_ns)
        "$C" backup --vm "vm$v" --time "$t" --json "$img" >"$LOGS/night.json" 2>"$LOGS/night.err" ||
            die "backup of vm$v night $night failed (log: $LOGS/night.err)"
        t1=$(now_ns)
        wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", (b - a) / 1e9}')
        j=$LOGS/night.json
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$v" "$night" "$wall" \
            "$(json_get "$j" 'j["bytes_stored"]')" "$(json_get "$j" 'j["catalog"] and j["catalog"]["entries"]')" \
            "$(json_get "$j" 'j["catalog"] and j["catalog"]["bytes"]')" \
            "$(json_get "$j" 'j["catalog"] and j["catalog"]["secs"]')" \
            "$(json_get "$j" 'j["duration_secs"]')" "$(json_get "$j" 'j["bytes_read"]')" >>"$NIGHTS_TSV"
        if (( v == 1 )); then
            grow_with=$(( $(du -sb "$W/repo/find" | cut -f1) - before ))
            printf '%s\t%s\t%s\t%s\t%s\n' "$night" "$grow_with" "$grow_without" "$wall" "$wall_without" >>"$TWIN_TSV"
        fi
    done
    (( night % 5 == 0 )) && info "night $night done"
done
HIST_S=$((SECONDS - HIST_T0))
HIST_OTHER=$(awk -v d=$(( $(busy_ticks) - HIST_B0 )) -v hz="$HZ" -v c0="$HIST_C0" -v c1="$(self_cpu)" \
    'BEGIN{o = d / hz - (c1 - c0); printf "%.1f", (o < 0 ? 0 : o)}')
info "history: ${HIST_S}s, other CPU ${HIST_OTHER}s"
FIND_REPO_BYTES=$(du -sb "$W/repo/find" | cut -f1)
NSNAP=$((VMS * NIGHTS))
EXP_NIGHT=$((VMS * NIGHTS * (NIGHTS - 1) / 2))
find "$W/repo/find" -type f -exec cat {} + >/dev/null

count_matches() {   # count_matches OUT EXPECTED: the "N matches in M snapshots" line
    local n m
    read -r n m < <(awk '/ match(es)? in [0-9]+ snapshots?$/ {print $1, $4}' "$1" | tail -n1)
    echo "$n" >>"$W/tmp/matches-$CUR_SERIES"
    echo "$m" >"$W/tmp/snaps-$CUR_SERIES"
    [[ -z $2 || $n == "$2" ]] || info "WARNING: $CUR_SERIES found $n matches, expected $2"
}
s_find_host() { tm find "$W/out/find.txt" "$C" find --name hostname; count_matches "$W/out/find.txt" "$NSNAP"; }
s_find_glob() { tm find "$W/out/find.txt" "$C" find --name 'night-*.log'; count_matches "$W/out/find.txt" "$EXP_NIGHT"; }
s_find_vm1() { tm find "$W/out/find.txt" "$C" find --vm vm1 --name hostname; count_matches "$W/out/find.txt" "$NIGHTS"; }
s_find_big_cat() { tm find "$W/out/find.txt" "$C" find --name budget-2026.ods; count_matches "$W/out/find.txt" 2; }
series find-hostname s_find_host
series find-glob s_find_glob
series find-vm1 s_find_vm1
use_repo with1
series find-4g-catalog s_find_big_cat
use_repo without1
find "$W/repo/without1" -type f -exec cat {} + >/dev/null
series find-4g-walk s_find_big_cat


# ------------------------------------------------------------ report
phase "writing $OUT"
TOTAL_S=$((SECONDS - START_S))
echo "$REPO_DATA" >"$W/tmp/repo_data"
echo "$LIST_N" >"$W/tmp/list_n"
awk -v b="$BIG_BYTES" 'BEGIN{ if (b >= 2^30) printf "%.0f GiB", b / 2^30; else printf "%.0f MiB", b / 2^20 }' >"$W/tmp/big_label"
awk -v b="$DIR_BYTES" -v n="$DIR_FILES" 'BEGIN{ printf "%.0f MiB (%d files)", b / 2^20, n }' >"$W/tmp/dir_label"
python3 - "$W" <<'EOF' >"$W/tables.md"
import statistics as st, sys, os, collections
W = sys.argv[1]
def tsv(name):
    p = os.path.join(W, name)
    return [l.rstrip("\n").split("\t") for l in open(p) if l.strip()]
def txt(name): return open(os.path.join(W, "tmp", name)).read().strip()
series = {r[0]: (int(r[1]), int(r[2])) for r in tsv("series.tsv")}
discarded = set(open(os.path.join(W, "discarded")).read().split())
reps = collections.defaultdict(list)      # (series, key) -> rows of the kept runs
tries = collections.defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])   # try -> [wall, other, loop wall, loop other]
LOOP = {"ls", "cp-1m", "cp-big", "cp-dir"}
for r in tsv("reps.tsv"):
    if r[0] in series and r[10] not in discarded:
        reps[(r[0], r[3])].append(r)
        i = 2 if r[0] == "admin" and r[3] in LOOP else 0
        tries[(r[0], r[10])][i] += float(r[4]); tries[(r[0], r[10])][i + 1] += float(r[7])
def col(s, k, i):
    return [float(r[i]) for r in reps[(s, k)] if r[i] not in ("-", "")]
def med(v): return st.median(v) if v else float("nan")
def mmm(v, d=2):
    if not v: return "–"
    return f"**{med(v):.{d}f}** ({min(v):.{d}f}–{max(v):.{d}f})"
def mib(b):
    if b != b: return "–"
    return f"{b / 2**20:.2f} MiB" if abs(b) >= 2**20 else f"{b / 1024:.1f} KiB"
def other(s):
    v = [float(r[7]) for k in reps if k[0] == s for r in reps[k]]
    red = series.get(s, (0, 0))[0]
    over = sum(1 for (ss, t), (w, o, lw, lo) in tries.items() if ss == s and (o > 0.5 + 0.15 * w or lo > lw + 0.5))
    notes = []
    if red: notes.append(f"{red} run{'s' if red > 1 else ''} redone")
    if over: notes.append(f"{over} kept run{'s' if over > 1 else ''} over the limit")
    return f"{sum(v):.1f}" + (f" ({', '.join(notes)})" if notes else "")
out = []
p = out.append
repo_data = int(txt("repo_data"))
p("| step | cairn: wall s, median (min–max) | cairn: fetched from the repository (reads) | cairn: peak RSS MiB | admin's way: restore disk + mount + ls/cp + umount, wall s | admin: read from the repository | other CPU s (cairn series) |")
p("|---|---:|---:|---:|---:|---:|---:|")
parts = ["full-restore", "mount", "umount"]
def admin(case):
    rows = list(zip(*[reps[("admin", k)] for k in parts + [case]]))
    return mmm([sum(float(r[4]) for r in rr) for rr in rows])
for s, k, label, case in [
        ("ls-l", "ls", f"1. `ls -l` of a directory of {txt('list_n')} files", "ls"),
        ("dump-1m", "dump", "2. `dump` of the 1 MiB file to a file", "cp-1m"),
        ("dump-big", "dump", f"3. `dump` of the {txt('big_label')} file to a file", "cp-big"),
        ("restore-dir", "restore", f"4. `restore --path` of a {txt('dir_label')} directory", "cp-dir")]:
    f = col(s, k, 8); rd = col(s, k, 9); rss = col(s, k, 6)
    p(f"| {label} | {mmm(col(s, k, 4), 3)} | {mib(med(f))} ({med(rd):.0f}) | {max(rss) / 1024:.0f} | {admin(case)} | {mib(repo_data)} | {other(s)} |")
p("")
prof = [int(x) for x in open(os.path.join(W, "tmp/rss-profile")).read().split()]
if prof:
    q = lambda f: prof[min(len(prof) - 1, int(f * len(prof)))] / 1024
    p(f"RSS of `dump` of the {txt('big_label')} file over its run ({len(prof)} samples, 50 ms apart, output to /dev/null): "
      f"{q(0.1):.0f} MiB at 10 % of the run, {q(0.25):.0f} at 25 %, {q(0.5):.0f} at 50 %, {q(0.75):.0f} at 75 %, "
      f"{q(0.9):.0f} at 90 %, {max(prof) / 1024:.0f} MiB peak.")
p("")
p(f"5. The admin's way, per part ({len(reps[('admin', 'full-restore')])} runs, median (min–max); other CPU over the series {other('admin')} s):")
p("")
p("| part | wall s | CPU s | peak RSS MiB |")
p("|---|---:|---:|---:|")
for k, label in [("full-restore", "`cairn restore SNAP --disk disk0.img --target FILE`"),
                 ("mount", "`losetup -P` + `mount -o ro,noload` of partition 1"),
                 ("ls", "`ls -l` of the directory"), ("cp-1m", "`cp` of the 1 MiB file"),
                 ("cp-big", f"`cp` of the {txt('big_label')} file"), ("cp-dir", "`cp -a` of the directory"),
                 ("umount", "`umount` + `losetup -d`")]:
    p(f"| {label} | {mmm(col('admin', k, 4), 3)} | {med(col('admin', k, 5)):.2f} | {max(col('admin', k, 6)) / 1024:.0f} |")
p("")
cat = [r for r in tsv("catalog.tsv") if r[9] not in discarded]
def cv(kind, step, i):
    return [float(r[i]) for r in cat if r[1] == kind and r[2] == step and r[i] not in ("-", "")]
n = len(cv("with", "first", 3))
p(f"6. Catalog cost on the image ({n} pair(s) of repositories with the same key; other CPU over the series {other('catalog')} s):")
p("")
p("| backup of the image | with catalog | `--no-catalog` | difference |")
p("|---|---:|---:|---:|")
for step, label in [("first", "first backup, wall s"), ("forced", "`--force-read` re-read, wall s")]:
    a, b = cv("with", step, 3), cv("without", step, 3)
    p(f"| {label} | {mmm(a)} | {mmm(b)} | {med(a) - med(b):+.2f} |")
secs = cv("with", "first", 8) + cv("with", "forced", 8)
p(f"| `catalog.secs` (building the catalog), all {len(secs)} backups | {mmm(secs, 3)} | – | |")
p(f"| catalog entries / encoded size | {med(cv('with', 'first', 6)):.0f} / {mib(med(cv('with', 'first', 7)))} | – | |")
ra, rb = cv("with", "first", 5), cv("without", "first", 5)
p(f"| repository after the first backup (`du -sb`) | {mib(med(ra))} | {mib(med(rb))} | **{mib(med(ra) - med(rb))}** ({100 * (med(ra) - med(rb)) / med(rb):+.3f} %) |")
sa, sb = cv("with", "first", 4), cv("without", "first", 4)
p(f"| `bytes_stored` of the first backup | {mib(med(sa))} | {mib(med(sb))} | {mib(med(sa) - med(sb))} |")
p("")
ni = tsv("nights.tsv"); tw = tsv("twin.tsv")
e = [float(r[4]) for r in ni if r[4] != "-"]; cb = [float(r[5]) for r in ni if r[5] != "-"]
cs = [float(r[6]) for r in ni if r[6] != "-"]; bw = [float(r[2]) for r in ni]
dur = [float(r[7]) for r in ni]
vms = len({r[0] for r in ni}); nights = len({r[1] for r in ni})
p(f"7. find over {len(ni)} snapshots ({vms} VMs × {nights} nights). The nightly history, per backup:")
p("")
p("| | median (min–max) |")
p("|---|---:|")
p(f"| catalog entries per snapshot | {med(e):.0f} ({min(e):.0f}–{max(e):.0f}) |")
p(f"| catalog encoded size per snapshot | {mib(med(cb))} ({mib(min(cb))}–{mib(max(cb))}) |")
p(f"| `catalog.secs` per backup | {mmm(cs, 3)} |")
p(f"| backup wall s (the image is re-read in full: its mtime changed) | {mmm(bw)} |")
p(f"| share of the backup spent on the catalog (`catalog.secs` / `duration_secs`) | {100 * med([a / b for a, b in zip(cs, dur) if b > 0]):.1f} % |")
if tw:
    g1 = [int(r[1]) - int(r[2]) for r in tw if r[0] == "1"]
    gn = [int(r[1]) - int(r[2]) for r in tw if r[0] != "1"]
    p(f"| stored bytes the catalog added (repository growth with − without), vm1 night 1 | {mib(g1[0]) if g1 else '–'} |")
    if gn:
        p(f"| … vm1 nights 2–{len(tw)} | {mib(med(gn))} ({mib(min(gn))}–{mib(max(gn))}) |")
    ww = [float(r[3]) - float(r[4]) for r in tw]
    p(f"| vm1 backup wall, with − without catalog (same night) | {med(ww):+.3f} s ({min(ww):+.3f} to {max(ww):+.3f}) |")
p("")
p("| `find` | snapshots searched | matches | wall s, median (min–max) | CPU s | peak RSS MiB | other CPU s |")
p("|---|---:|---:|---:|---:|---:|---:|")
for s, q in [("find-hostname", "`find --name hostname`"), ("find-glob", "`find --name 'night-*.log'`"),
             ("find-vm1", "`find --vm vm1 --name hostname`"),
             ("find-4g-catalog", "`find --name budget-2026.ods`, disk0.img's repository (snapshots with catalog)"),
             ("find-4g-walk", "the same, snapshots written with `--no-catalog` (walks the filesystem)")]:
    m = txt("matches-" + s).split()
    p(f"| {q} | {txt('snaps-' + s)} | {'/'.join(sorted(set(m)))} | {mmm(col(s, 'find', 4), 3)} | {med(col(s, 'find', 5)):.2f} | {max(col(s, 'find', 6)) / 1024:.0f} | {other(s)} |")
print("\n".join(out))
EOF
waits=$(awk -F'\t' '{s += $3} END {print s + 0}' "$SERIES_TSV")
redone=$(awk -F'\t' '$2 > 0 {printf "%s%s %s", (n++ ? ", " : ""), $1, $2} END {if (!n) print "none"}' "$SERIES_TSV")
{
    echo "# cairn file-level restore benchmark"
    echo
    echo "Run $START_UTC – $(date -u +%H:%M:%SZ) ($((TOTAL_S / 60)) min $((TOTAL_S % 60)) s) on $(hostname): $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r); workdir $W ($(df -T "$W" | awk 'NR==2 {print $2}')). Load average at the start: $LOAD_START."
    echo
    echo '```sh'
    printf '%q ' "$0" "${ARGS[@]}"; echo
    cat "$CMDS"
    echo '```'
    echo
    echo "- cairn: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && [[ -z $(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] || echo ' + uncommitted changes in src'), binary $CAIRN_BIN_ORIG built $(date -u -r "$CAIRN_BIN_ORIG" +%H:%M:%SZ), run from a copy; \`cairn init\` defaults (aes-256-gcm, FastCDC 32 KiB, zstd 3)."
    echo "- Image: disk0.img, $IMG_BYTES bytes raw ($((IMG_ALLOC / 1048576)) MiB allocated), GPT + ext4: gen-tree.py $TREE_MIB MiB (seed $SEED) + /srv/app ($DIR_FILES files, $((DIR_BYTES / 1048576)) MiB, gen-tree.py seed $SEED-app) + /home/deploy/mail ($LIST_N files) + /home/alice/docs/budget-2026.ods (1 MiB) + /var/lib/db/orders.db ($((BIG_BYTES / 1048576)) MiB). zstd -3 of the two files: $(awk '{printf "%s%s %.0f%%", (NR > 1 ? ", " : ""), $1, 100 * $3 / $2}' "$W/tmp/compress.txt" 2>/dev/null) of their size."
    echo "- Repository measured in 1-5: $((REPO_ALL / 1048576)) MiB, of which data/ $((REPO_DATA / 1048576)) MiB (one snapshot of the image, with its catalog)."
    echo "- find history: $VMS VMs × $NIGHTS nights, $VM_SIZE images with a ${VM_TREE_MIB} MiB gen-tree.py tree each ($(paste -sd/ "$W/tmp/vm-files") files); built in ${HIST_S} s (not idle-controlled; other CPU ${HIST_OTHER} s over it); repository $((FIND_REPO_BYTES / 1048576)) MiB."
    echo "- Page cache warm (nothing dropped; repositories and images read once before). Each series waited for an idle machine (up to ${QUIET_WAIT} s; ${waits} s waited in all); a run (one command, or one admin sequence, or one pair of catalog backups in fresh copies) whose other CPU exceeded 0.5 s + 15 % of its wall time was redone after another wait, up to $RETRIES times (runs redone per series: $redone). The admin's ls/cp read through the loop device, whose kernel threads /proc/stat counts as other CPU: those parts are held to other CPU ≤ their wall + 0.5 s instead."
    echo "- Wall = nanosecond clock around the command; CPU = user+sys and peak RSS = GNU time. Fetched = cairn's \`--stats\` line (2-decimal binary units) or \`bytes_fetched\` of \`restore --json\` (exact). MiB = 2^20 bytes."
    echo "- \`restore --path\` and \`restore --disk\` fsync what they write; \`cp\` does not."
    echo
    cat "$W/tables.md"
    echo
    echo "Logs: $LOGS"
} >"$OUT"
if (( ! KEEP )); then
    rm -rf -- "$W/img" "$W/vm" "$W/out" "$W/repo" "$W/cache"
fi
echo
cat "$OUT"
phase "done: $OUT"
