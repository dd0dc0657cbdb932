#!/usr/bin/env bash
# cbt-bench.sh -- changed-block backups (--changed-extents) against a full re-read.
#
#   tools/cbt-bench.sh [--sizes 4,32] [--content-mib 2457,9216] [--clustered-pct 2]
#                      [--scattered-pct 2] [--runs 3] [--workdir /tmp/cairn-cbt-bench]
#                      [--out cbt-results.md] [--seed 1] [--no-build] [--cairn-bin PATH]
#                      [--quiet-wait SECS] [--retries N] [--quick] [--tree-dir DIR]
#                      [--source-mbps MB_PER_S]
#
# --quick: one 1 GiB image with 600 MiB of content, one run per step (a smoke test).
# --tree-dir: where gen-tree.py writes the content before mkimage.sh packs it (default
#   WORKDIR/tree; removed right after), e.g. a tmpfs such as /dev/shm/cbt-tree when the
#   disk has no room for the tree and the image side by side.  A size that does not fit
#   in the free space is skipped, with a note in the results.
# --source-mbps: the source as a NAS or SAN would serve it: every timed step runs in a
#   cgroup-v1 blkio group whose reads from the workdir's disk are throttled to this many
#   MB/s (10^6 bytes), and starts with the page cache dropped and only the repository,
#   its index cache and the binary read back, so the image is read from the disk at that
#   rate.  Needs root and
#   /sys/fs/cgroup/blkio.  Without it the page cache is warm and the source costs nothing
#   but CPU.
#
# Per image size (GiB, with the matching --content-mib of gen-tree.py content):
#   1. gen-tree.py (seed) + mkimage.sh -> img/disk.img, a sparse raw GPT + ext4 image;
#      b3sum of it kept (the "base" content).
#   2. cairn init + first backup (full read) of disk.img into repo/r0; timed.
#   3. Per case, starting from the base content:
#        clustered  --clustered-pct % of the allocated data as 256 KiB..8 MiB extents
#                   of new data (half random, half log-like text), each inside one
#                   allocated extent of the image;
#        scattered  --scattered-pct % of the allocated data, half of the bytes as
#                   4 KiB writes of new data (4 KiB aligned), half as 8 KiB "database
#                   page" rewrites (8 KiB aligned: the page's own bytes with a new
#                   24-byte header and 1..4 row edits of 32..256 bytes), uniform over
#                   the allocated data;
#      no two writes overlap, and none touches the filesystem's metadata (the blocks
#      `e2image -r` copies are left out), so only file contents change, as a guest's
#      writes would; `e2fsck -fn` must find the changed filesystem clean (the file
#      catalog then walks the whole tree, as it would on a real disk).  The writes
#      are made in place with qemu-io (one
#      `write -s FILE OFF LEN` each) and the change map is written as plain JSON
#      [{"offset":N,"length":N}, ...] from exactly those writes.  The original bytes
#      are saved first, so the image is put back to the base content afterwards
#      (checked with b3sum) before the next case.
#      --runs times, alternating, each in a fresh copy of repo/r0 (hard-linked: cairn
#      never modifies a repository file in place, it writes new files and renames;
#      the local index cache is copied for real), so both start from the same
#      repository state and store the same new data:
#        (i)  cairn backup --changed-extents map.json disk.img
#        (ii) cairn backup --force-read disk.img      (the full re-read)
#      timed with GNU time; bytes read from the source, changed, skipped and fetched
#      from the repository come from the report (items[].changed_blocks, bytes_read).
#      Medians are shown (range in the results file).
#   4. Checks (untimed), in the copy of the last (i):
#      - the tables: one more `--force-read --rewrite-budget 0` backup of the same
#        image must store nothing new (bytes_new 0), and `cairn check --json` must
#        give it exactly the incremental snapshot's fragmentation figures (data
#        bytes, packs, reads, read bytes), i.e. the same chunks in the same places;
#        the forced read (ii) must have the same data bytes; check finds no problems;
#      - the content: the incremental snapshot restored to a file and compared with
#        the image (cmp), if there is room on the disk;
#      - what really is read: (i) once more in a fresh copy under strace -ff -y, the
#        bytes read from the image file and from the repository's files summed.
#      - (i) once more with --no-catalog, to show what the file catalog costs.
#   5. markdown tables to --out and stdout, aims marked met/missed:
#      source bytes read <= 4x the changed bytes (both cases); (i) at least 20x
#      faster than (ii) at the 2 % clustered change.
#
# Method as in BENCHMARKS.md: warm page cache (the image and the repository are read
# with cat before every timed step), the machine is idle-waited before every timed
# step (up to --quiet-wait s, default 600), and every step records "other CPU" (busy
# CPU of the whole machine from /proc/stat minus the step's own).  A run whose (i)
# or (ii) had other CPU > 0.1 s + 15 % (40 % with --source-mbps) of its wall time is redone in fresh copies, up
# to --retries times (default 2); stricter than the 0.5 s of bench.sh because the
# incremental steps take about a second.  The workdir is wiped at start (only if it
# is empty or was made by this script).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

SIZES=4,32
CONTENT=2457,9216
CL_PCT=2
SC_PCT=2
RUNS=3
WORKDIR=/tmp/cairn-cbt-bench
OUT=cbt-results.md
SEED=1
BUILD=1
CAIRN_BIN=
QUIET_WAIT=600
RETRIES=2
QUICK=0
TREE_DIR=
SOURCE_MBPS=0
ARGS=("$@")

usage() { sed -n '2,76p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --sizes) SIZES=$2; shift 2 ;;
        --content-mib) CONTENT=$2; shift 2 ;;
        --clustered-pct) CL_PCT=$2; shift 2 ;;
        --scattered-pct) SC_PCT=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --workdir) WORKDIR=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --seed) SEED=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --cairn-bin) CAIRN_BIN=$2; BUILD=0; shift 2 ;;
        --quiet-wait) QUIET_WAIT=$2; shift 2 ;;
        --retries) RETRIES=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --tree-dir) TREE_DIR=$2; shift 2 ;;
        --source-mbps) SOURCE_MBPS=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "cbt-bench: unknown argument $1" >&2; usage 2 ;;
    esac
done
if (( QUICK )); then SIZES=1; CONTENT=600; RUNS=1; fi
IFS=, read -ra SIZE_L <<<"$SIZES"
IFS=, read -ra CONTENT_L <<<"$CONTENT"
(( ${#SIZE_L[@]} == ${#CONTENT_L[@]} )) ||
    { echo "cbt-bench: --sizes and --content-mib need the same number of entries" >&2; exit 2; }
[[ $SOURCE_MBPS =~ ^[0-9]+$ ]] || { echo "cbt-bench: --source-mbps $SOURCE_MBPS is not a whole number" >&2; exit 2; }
for v in "${SIZE_L[@]}" "${CONTENT_L[@]}" "$RUNS"; do
    [[ $v =~ ^[0-9]+$ && $v -ge 1 ]] || { echo "cbt-bench: $v is not a positive integer" >&2; exit 2; }
done
for v in "$CL_PCT" "$SC_PCT"; do
    [[ $v =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "cbt-bench: $v is not a percentage" >&2; exit 2; }
done
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
case $WORKDIR in /*) ;; *) WORKDIR=$PWD/$WORKDIR ;; esac
WORKDIR=${WORKDIR%/}

BENCH_NAME=cbt-bench
# shellcheck source=tools/bench-lib.sh
source "$HERE/bench-lib.sh"   # phase, info, die, logcmd, run, busy_ticks, wait_quiet, prepare_cairn

for t in python3 qemu-io sfdisk mkfs.ext4 e2fsck e2image b3sum strace cmp du df; do
    command -v "$t" >/dev/null || die "$t not found (tools/install-deps.sh; strace: apt-get install strace)"
done
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) not found: apt-get install time"

# ------------------------------------------------------------ workdir
[[ -n $WORKDIR && $WORKDIR != / && $WORKDIR != "$HOME" && $WORKDIR != "$ROOT" ]] ||
    die "refusing to use $WORKDIR as workdir"
if [[ -e $WORKDIR ]]; then
    if [[ -n $(ls -A "$WORKDIR") && ! -e $WORKDIR/.cairn-cbt-bench ]]; then
        die "$WORKDIR is not empty and was not made by cbt-bench.sh; remove it or pick another --workdir"
    fi
    phase "wiping workdir $WORKDIR"
    rm -rf -- "$WORKDIR"
fi
mkdir -p "$WORKDIR"/{img,repo,cache,logs,tmp,restore,strace}
touch "$WORKDIR/.cairn-cbt-bench"

# ------------------------------------------------------------ the throttled source
CG=
if (( SOURCE_MBPS > 0 )); then
    [[ $(id -u) == 0 ]] || die "--source-mbps needs root (a blkio cgroup and drop_caches)"
    [[ -d /sys/fs/cgroup/blkio ]] || die "--source-mbps needs the cgroup-v1 blkio controller at /sys/fs/cgroup/blkio"
    SRC_DEV=$(df --output=source "$WORKDIR" | tail -n 1)
    [[ -b $SRC_DEV ]] || die "the workdir is on $SRC_DEV, not a block device: nothing to throttle"
    PK=$(lsblk -ndo PKNAME "$SRC_DEV" 2>/dev/null || true)
    [[ -n $PK ]] && SRC_DEV=/dev/$PK
    MAJMIN=$(lsblk -ndo MAJ:MIN "$SRC_DEV" | tr -d ' ')
    CG=/sys/fs/cgroup/blkio/cairn-cbt-bench
    mkdir -p "$CG"
    echo "$MAJMIN $((SOURCE_MBPS * 1000000))" >"$CG/blkio.throttle.read_bps_device"
    trap 'rmdir "$CG" 2>/dev/null || true' EXIT
    info "timed steps read $SRC_DEV ($MAJMIN) at most $SOURCE_MBPS MB/s, from a cold page cache"
fi
LOGS=$WORKDIR/logs
CMDS=$WORKDIR/commands.txt
ROWS=$WORKDIR/rows.tsv       # one line per timed step, see measure()
CHECKS=$WORKDIR/checks.tsv   # size case key value
CASES=$WORKDIR/cases.tsv     # size case writes changed_bytes data_bytes summary
: >"$CMDS"; : >"$ROWS"; : >"$CHECKS"; : >"$CASES"
export CAIRN_PASSWORD=bench
unset CAIRN_PASSWORD_FILE CAIRN_REPOSITORY CAIRN_CACHE_DIR || true
echo "export CAIRN_PASSWORD=bench   # every command below names --repo and its own CAIRN_CACHE_DIR" >>"$CMDS"

prepare_cairn

# ------------------------------------------------------------ the write planner
PLAN=$WORKDIR/cbt-plan.py
cat >"$PLAN" <<'EOF'
"""plan IMG META CASE PCT SEED DIR: plan non-overlapping writes into IMG's allocated
file data (allocated extents minus the ext4 metadata in META, `e2image -r` output),
save the original bytes (DIR/undo.*), write DIR/qemu-io.cmds (one write -s each, the
data in DIR/w/), DIR/map.json (exactly the writes) and print a summary as JSON.
revert IMG DIR: put the saved original bytes back."""
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

def data_extents(img, meta, fs_offset):
    """The image's allocated extents minus the filesystem's metadata (the data of
    `e2image -r`, whose offsets are relative to the filesystem at fs_offset): the
    writes change file contents, as a guest does, and leave the filesystem intact."""
    size, ext = extents(img)
    _, m = extents(meta)
    m = [(o + fs_offset, o + fs_offset + l) for o, l in m]
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
    return size, ext, out

def text(rng, n):
    out, L = [], 0
    while L < n:
        s = "%d %s %s %s\n" % (rng.getrandbits(40), rng.choice(WORDS), rng.choice(WORDS),
                               rng.getrandbits(20))
        out.append(s); L += len(s)
    return "".join(out).encode()[:n]

def new_data(rng, n):
    return rng.randbytes(n) if rng.random() < 0.5 else text(rng, n)

def plan(img, meta, case, pct, seed, d):
    rng = random.Random(f"cairn-cbt-bench/{seed}/{case}")
    size, alloc, ext = data_extents(img, meta, 1 << 20)
    data = sum(l for _, l in alloc)              # the image's allocated data
    writable = sum(l for _, l in ext)            # of which file contents
    budget = int(data * pct / 100)
    lo, hi = 1 << 20, size - (1 << 20)           # clear of the GPT headers
    cum = [0]
    for _, l in ext:
        cum.append(cum[-1] + l)
    starts, ends = [], []                        # planned writes, sorted by start
    def free(o, n):
        i = bisect.bisect_right(starts, o)
        if i > 0 and ends[i - 1] > o:
            return False
        return not (i < len(starts) and starts[i] < o + n)
    def add(o, n):
        i = bisect.bisect_right(starts, o)
        starts.insert(i, o); ends.insert(i, o + n)
    def pick(n, align, min_n):
        # a place for up to n bytes inside one allocated extent, aligned; None if none
        for _ in range(1000):
            r = rng.randrange(writable)
            k = bisect.bisect_right(cum, r) - 1
            e0, el = ext[k]
            o = e0 + (r - cum[k])
            o -= o % align
            o = max(o, e0 + (-e0) % align, lo)
            m = min(n, e0 + el - o, hi - o)
            m -= m % align
            if m >= min_n and free(o, m):
                return o, m
        return None
    os.makedirs(os.path.join(d, "w"), exist_ok=True)
    writes = []                                  # (offset, length, kind)
    fd = os.open(img, os.O_RDONLY)
    def orig(o, n):
        return os.pread(fd, n, o)
    payload = {}
    if case == "clustered":
        done = 0
        while done < budget:
            n = int(math.exp(rng.uniform(math.log(256 * K), math.log(8192 * K))))
            n = min(n, budget - done)
            n -= n % (4 * K)
            if n < 4 * K:
                break
            p = pick(n, 4 * K, min(n, 64 * K))
            if p is None:
                break
            o, m = p
            add(o, m); writes.append((o, m, "extent"))
            payload[o] = new_data(rng, m)
            done += m
    elif case == "scattered":
        for size_w, kind in ((4 * K, "4k"), (8 * K, "page")):
            for _ in range(budget // 2 // size_w):
                p = pick(size_w, size_w, size_w)
                if p is None:
                    break
                o, m = p
                add(o, m); writes.append((o, m, kind))
                if kind == "4k":
                    payload[o] = new_data(rng, m)
                else:                            # a database page rewritten: header + rows
                    b = bytearray(orig(o, m))
                    b[0:24] = rng.randbytes(24)
                    for _ in range(rng.randint(1, 4)):
                        ln = rng.randint(32, 256)
                        at = rng.randrange(24, m - ln)
                        b[at:at + ln] = rng.randbytes(ln)
                    payload[o] = bytes(b)
        rng.shuffle(writes)                      # in no particular disk order
    else:
        sys.exit(f"unknown case {case}")
    with open(os.path.join(d, "undo.bin"), "wb") as u:
        for o, m, _ in writes:
            u.write(orig(o, m))
    os.close(fd)
    json.dump([[o, m] for o, m, _ in writes], open(os.path.join(d, "undo.json"), "w"))
    cmds = []
    for i, (o, m, _) in enumerate(writes):
        p = os.path.join(d, "w", f"{i:06d}.bin")
        with open(p, "wb") as f:
            f.write(payload[o])
        cmds.append(f"write -q -s {p} {o} {m}")
    open(os.path.join(d, "qemu-io.cmds"), "w").write("\n".join(cmds) + "\n")
    json.dump([{"offset": o, "length": m} for o, m, _ in writes],
              open(os.path.join(d, "map.json"), "w"))
    changed = sum(m for _, m, _ in writes)
    kinds = {}
    for _, m, k in writes:
        kinds.setdefault(k, [0, 0]); kinds[k][0] += 1; kinds[k][1] += m
    desc = ", ".join(f"{c} x {'%d KiB' % (b // c // K) if k != 'extent' else 'extents of 256 KiB..8 MiB'}"
                     f" ({b / 2**20:.1f} MiB)" for k, (c, b) in kinds.items())
    print(json.dumps({"writes": len(writes), "changed": changed, "data": data, "size": size,
                      "extents": len(alloc), "file_data": writable, "desc": desc,
                      "pct": round(100 * changed / data, 3)}))

def revert(img, d):
    writes = json.load(open(os.path.join(d, "undo.json")))
    fd = os.open(img, os.O_WRONLY)
    with open(os.path.join(d, "undo.bin"), "rb") as u:
        for o, m in writes:
            b = u.read(m)
            assert len(b) == m
            os.pwrite(fd, b, o)
    os.fsync(fd)
    os.close(fd)

if sys.argv[1] == "plan":
    plan(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6], sys.argv[7])
elif sys.argv[1] == "revert":
    revert(sys.argv[2], sys.argv[3])
EOF

# ------------------------------------------------------------ helpers
# jget FILE EXPR: a value from a cairn --json output (python expression over j)
jget() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

# measure NAME SIZE CASE STEP RUN -- CMD...: run CMD under GNU time, record a row:
# size case step run wall cpu rss_kib other_cpu name
LAST_OTHER=0 LAST_WALL=0
measure() {
    local name=$1 size=$2 case=$3 step=$4 r=$5; shift 5
    [[ $1 == -- ]] && shift
    logcmd "$@"
    # throttled: the command joins the blkio group before it starts
    [[ -n $CG ]] && set -- sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$CG" "$@"
    local tf=$LOGS/$name.time b0 b1 wall user sys rss cpu other
    b0=$(busy_ticks)
    if ! /usr/bin/time -f '%e %U %S %M' -o "$tf" -- "$@" </dev/null \
            >"$LOGS/$name.out" 2>"$LOGS/$name.err"; then
        echo "cbt-bench: command failed: $*" >&2
        tail -n 20 "$LOGS/$name.err" >&2 || true
        exit 1
    fi
    b1=$(busy_ticks)
    read -r wall user sys rss < <(tail -n1 "$tf")
    cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN{printf "%.2f", u+s}')
    other=$(awk -v d=$((b1 - b0)) -v hz="$HZ" -v c="$cpu" 'BEGIN{o = d/hz - c; printf "%.2f", (o < 0 ? 0 : o)}')
    LAST_OTHER=$other LAST_WALL=$wall
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$size" "$case" "$step" "$r" "$wall" "$cpu" \
        "$rss" "$other" "$name" >>"$ROWS"
    info "$size GiB $case $step run $r: wall ${wall}s cpu ${cpu}s other-cpu ${other}s"
}
disturbed() {   # disturbed WALL OTHER: other CPU > 0.1 s + 15% of wall
    # (40 % with --source-mbps: the kernel's own threads then do the throttled reads)
    awk -v w="$1" -v o="$2" -v f="$([[ -n $CG ]] && echo 0.4 || echo 0.15)" 'BEGIN{exit !(o > 0.1 + f * w)}'
}
drop_last_rows() {   # drop_last_rows N
    head -n "-$1" "$ROWS" >"$ROWS.tmp" && mv "$ROWS.tmp" "$ROWS"
}
warm() {   # the image, the repository and its index cache into the page cache
    if [[ -n $CG ]]; then   # throttled: all but the image, which stays on the disk
        sync
        echo 3 >/proc/sys/vm/drop_caches
        cat "$CAIRN_BIN" >/dev/null
    else
        cat "$IMG" >/dev/null
    fi
    find "$1" "$WORKDIR/cache/$(basename "$1")" -type f -exec cat {} + >/dev/null
}
# copy_repo NAME: a hard-linked copy of repo/r0 and a real copy of its cache
copy_repo() {
    rm -rf -- "$WORKDIR/repo/$1" "$WORKDIR/cache/$1"
    cp -al -- "$WORKDIR/repo/r0" "$WORKDIR/repo/$1"
    cp -a -- "$WORKDIR/cache/r0" "$WORKDIR/cache/$1"
}
drop_repo() { rm -rf -- "$WORKDIR/repo/$1" "$WORKDIR/cache/$1"; }
# C NAME ARGS...: cairn on repository NAME (a command line for run/measure/logcmd)
C() { local r=$1; shift; echo env "CAIRN_CACHE_DIR=$WORKDIR/cache/$r" "$CAIRN_BIN" --repo "$WORKDIR/repo/$r" "$@"; }
check() { echo "$1	$2	$3	$4" >>"$CHECKS"; info "check $1 GiB $2: $3 = $4"; }

# strace_reads NAME REPO CMD...: run CMD under strace -ff -y; print "image_bytes
# image_calls repo_bytes repo_calls" (read/pread64/readv/preadv return values on
# descriptors that resolve to the image / to files under the repository)
strace_reads() {
    local name=$1 repo=$2; shift 2
    local d=$WORKDIR/strace/$name
    rm -rf "$d"; mkdir -p "$d"
    run "$name" strace -ff -y -s 0 -qq -e trace=read,pread64,readv,preadv,preadv2 -o "$d/t" "$@"
    python3 - "$d" "$(realpath "$IMG")" "$(realpath "$repo")/" <<'EOF'
import os, re, sys
d, img, repo = sys.argv[1:4]
pat = re.compile(r'^(read|pread64|readv|preadv|preadv2)\(\d+<(.*?)>, .* = (\d+)$')
ib = ic = rb = rc = 0
for name in os.listdir(d):
    for line in open(os.path.join(d, name), errors="replace"):
        m = pat.match(line.rstrip("\n"))
        if not m:
            continue
        if m.group(2) == img:
            ib += int(m.group(3)); ic += 1
        elif m.group(2).startswith(repo):
            rb += int(m.group(3)); rc += 1
print(ib, ic, rb, rc)
EOF
    rm -rf "$d"
}

# ------------------------------------------------------------ per size
IMG=$WORKDIR/img/disk.img
for si in "${!SIZE_L[@]}"; do
    S=${SIZE_L[$si]} CM=${CONTENT_L[$si]}
    TREE=${TREE_DIR:-$WORKDIR/tree}
    avail=$(df -Pk "$WORKDIR" | awk 'NR==2 {print int($4/1024)}')
    # peak: the image, the repository (about half the content) and, on the same
    # filesystem, the tree while mkimage copies it; a restored copy only if there is room
    need=$(( CM * 16 / 10 + 1024 ))
    mkdir -p "$(dirname "$TREE")"
    if [[ $(df -P "$(dirname "$TREE")" | awk 'NR==2 {print $1}') == $(df -P "$WORKDIR" | awk 'NR==2 {print $1}') ]]; then
        need=$(( need + CM ))
    else
        tfree=$(df -Pk "$(dirname "$TREE")" | awk 'NR==2 {print int($4/1024)}')
        (( tfree > CM + 512 )) || die "--tree-dir $TREE_DIR: ${tfree} MiB free, $CM MiB needed"
    fi
    info "$S GiB image, $CM MiB of content: ${avail} MiB free in $WORKDIR, about ${need} MiB needed at the peak"
    if (( avail < need )); then
        info "SKIPPING the $S GiB image: not enough room (${avail} MiB free, ~${need} MiB needed); use a smaller --sizes/--content-mib"
        check "$S" - skipped "not enough room: ${avail} MiB free, ~${need} MiB needed"
        continue
    fi

    phase "$S GiB: generating $CM MiB of content (gen-tree.py, seed $SEED) and the image"
    if [[ -e $TREE && -n $(ls -A "$TREE") && ! -e $TREE/.gen-tree.json ]]; then
        die "$TREE exists and is not a gen-tree.py tree; pick another --tree-dir"
    fi
    rm -rf -- "$TREE"
    logcmd python3 "$HERE/gen-tree.py" "$TREE" --size-mib "$CM" --seed "$SEED"
    python3 "$HERE/gen-tree.py" "$TREE" --size-mib "$CM" --seed "$SEED" >"$LOGS/gen-tree-$S.out"
    logcmd "$HERE/mkimage.sh" "$IMG" "${S}G" "$TREE"
    "$HERE/mkimage.sh" "$IMG" "${S}G" "$TREE" >"$LOGS/mkimage-$S.out"
    rm -rf -- "$TREE"
    BASE_SUM=$(b3sum --no-names "$IMG")
    ALLOC=$(( $(stat -c %b "$IMG") * $(stat -c %B "$IMG") ))
    check "$S" - image "$(stat -c %s "$IMG") bytes, $ALLOC allocated, b3sum ${BASE_SUM:0:16}"

    phase "$S GiB: first backup (full read) into repo/r0"
    drop_repo r0
    run "init-$S" $(C r0 init)
    mkdir -p "$WORKDIR/cache/r0"
    attempt=1
    while :; do
        rm -rf -- "$WORKDIR/repo/r0.try" "$WORKDIR/cache/r0.try"
        cp -a -- "$WORKDIR/repo/r0" "$WORKDIR/repo/r0.try"
        cp -a -- "$WORKDIR/cache/r0" "$WORKDIR/cache/r0.try"
        wait_quiet
        warm "$WORKDIR/repo/r0.try"
        measure "first-$S-$attempt" "$S" - first 1 -- $(C r0.try backup --vm cbt --json "$IMG")
        if disturbed "$LAST_WALL" "$LAST_OTHER" && (( attempt <= RETRIES )); then
            info "first backup was disturbed by other processes; redoing"
            drop_last_rows 1; attempt=$((attempt + 1)); continue
        fi
        break
    done
    drop_repo r0
    mv -- "$WORKDIR/repo/r0.try" "$WORKDIR/repo/r0"
    mv -- "$WORKDIR/cache/r0.try" "$WORKDIR/cache/r0"
    FIRST_OUT=$LOGS/first-$S-$attempt.out
    check "$S" - first_backup "bytes_read $(jget "$FIRST_OUT" 'j["bytes_read"]'), stored $(jget "$FIRST_OUT" 'j["bytes_stored"]'), attempt $attempt"
    check "$S" - repo_r0_bytes "$(du -sb "$WORKDIR/repo/r0" | cut -f1)"

    for CASE in clustered scattered; do
        PCT=$CL_PCT; [[ $CASE == scattered ]] && PCT=$SC_PCT
        CD=$WORKDIR/tmp/$S-$CASE
        rm -rf -- "$CD"; mkdir -p "$CD"
        phase "$S GiB $CASE: planning a ${PCT}% change and writing it with qemu-io"
        # the filesystem's metadata blocks, so that the writes change file contents only
        rm -f -- "$CD/meta.raw"
        run "e2image-$S-$CASE" e2image -r -o 1048576 "$IMG" "$CD/meta.raw"
        logcmd python3 "$PLAN" plan "$IMG" "$CD/meta.raw" "$CASE" "$PCT" "$SEED" "$CD"
        python3 "$PLAN" plan "$IMG" "$CD/meta.raw" "$CASE" "$PCT" "$SEED" "$CD" >"$CD/summary.json"
        rm -f -- "$CD/meta.raw"
        info "$(cat "$CD/summary.json")"
        logcmd qemu-io -f raw "$IMG" "<" "$CD/qemu-io.cmds"
        qemu-io -f raw "$IMG" <"$CD/qemu-io.cmds" >"$LOGS/qemu-io-$S-$CASE.out" 2>&1 ||
            die "qemu-io failed (log: $LOGS/qemu-io-$S-$CASE.out)"
        if grep -qiE 'error|failed|invalid' "$LOGS/qemu-io-$S-$CASE.out"; then
            die "qemu-io reported errors (log: $LOGS/qemu-io-$S-$CASE.out)"
        fi
        rm -rf -- "$CD/w"
        [[ $(b3sum --no-names "$IMG") != "$BASE_SUM" ]] || die "the change left the image as it was"
        # file contents changed, the filesystem itself must still be clean
        if e2fsck -fn "$IMG?offset=1048576" >"$LOGS/e2fsck-$S-$CASE.out" 2>&1; then
            check "$S" "$CASE" e2fsck_after_change clean
        else
            check "$S" "$CASE" e2fsck_after_change "NOT clean (log: $LOGS/e2fsck-$S-$CASE.out)"
        fi
        printf '%s\t%s\t%s\n' "$S" "$CASE" "$(cat "$CD/summary.json")" >>"$CASES"
        MAP=$CD/map.json

        for ((r = 1; r <= RUNS; r++)); do
            attempt=1
            while :; do
                copy_repo "i$r"; copy_repo "f$r"
                wait_quiet
                warm "$WORKDIR/repo/i$r"
                measure "$S-$CASE-i-$r" "$S" "$CASE" i "$r" -- \
                    $(C "i$r" backup --vm cbt --json --changed-extents "$MAP" "$IMG")
                bad=0
                disturbed "$LAST_WALL" "$LAST_OTHER" && bad=1
                wait_quiet
                warm "$WORKDIR/repo/f$r"
                measure "$S-$CASE-ii-$r" "$S" "$CASE" ii "$r" -- \
                    $(C "f$r" backup --vm cbt --json --force-read "$IMG")
                disturbed "$LAST_WALL" "$LAST_OTHER" && bad=1
                if (( bad )) && (( attempt <= RETRIES )); then
                    info "run $r was disturbed by other processes; redoing it in fresh copies"
                    drop_last_rows 2; attempt=$((attempt + 1)); continue
                fi
                break
            done
            echo "$attempt" >"$WORKDIR/attempts-$S-$CASE-$r"
            # the map must have been used: changed_blocks in the report, no full-read warning
            o=$LOGS/$S-$CASE-i-$r.out
            [[ $(jget "$o" '"changed_blocks" in j["items"][0]') == True ]] ||
                die "$S GiB $CASE: the backup with --changed-extents did not use the map: $(jget "$o" 'j["warnings"]')"
            if (( r < RUNS )); then drop_repo "i$r"; drop_repo "f$r"; fi
        done
        LASTI=i$RUNS
        SI=$(jget "$LOGS/$S-$CASE-i-$RUNS.out" 'j["snapshot"][:8]')
        SF=$(jget "$LOGS/$S-$CASE-ii-$RUNS.out" 'j["snapshot"][:8]')

        phase "$S GiB $CASE: checks (untimed)"
        # 1. the tables: a full read of the same image must find every chunk already
        # stored, and check must see the same chunks in the same places
        run "$S-$CASE-verify" $(C "$LASTI" backup --vm cbt --json --force-read --rewrite-budget 0 "$IMG")
        SV=$(jget "$LOGS/$S-$CASE-verify.out" 'j["snapshot"][:8]')
        check "$S" "$CASE" verify_bytes_new "$(jget "$LOGS/$S-$CASE-verify.out" 'j["bytes_new"]')"
        run "$S-$CASE-check" $(C "$LASTI" check --json)
        python3 - "$LOGS/$S-$CASE-check.out" "$SI" "$SV" "$LOGS/$S-$CASE-verify.out" \
            "$LOGS/$S-$CASE-ii-$RUNS.out" "$S" "$CASE" >>"$CHECKS" <<'EOF'
import json, sys
chk, si, sv, ver, forced, S, case = sys.argv[1:8]
j = json.load(open(chk))
fr = {f["snapshot"]: f for f in j["fragmentation"]}
keys = ["data_bytes", "packs", "reads", "read_bytes"]
a, b = fr[si], fr[sv]
same = all(a[k] == b[k] for k in keys)
print(f"{S}\t{case}\ttables_equal\t{'yes' if same else 'NO'} (incremental {si}: " +
      ", ".join(f"{k} {a[k]}" for k in keys) + f"; full read {sv}: " +
      ", ".join(f"{k} {b[k]}" for k in keys) + ")")
print(f"{S}\t{case}\tcheck_problems\t{len(j['problems'])}")
print(f"{S}\t{case}\tincremental_fragmentation\tpacks {a['packs']}, reads {a['reads']}, "
      f"read_bytes {a['read_bytes']}, read_per_data {a['read_per_data']:.3f}")
EOF
        tail -n 3 "$CHECKS" | while IFS=$'\t' read -r _ _ k v; do info "check $k = $v"; done
        # the forced read (ii), in its own copy, must hold the same data bytes
        run "$S-$CASE-check-ii" $(C "f$RUNS" check --json)
        python3 - "$LOGS/$S-$CASE-check-ii.out" "$LOGS/$S-$CASE-check.out" "$SF" "$SI" "$S" "$CASE" >>"$CHECKS" <<'EOF2'
import json, sys
a, b, sf, si, S, case = sys.argv[1:7]
f = {x["snapshot"]: x for x in json.load(open(a))["fragmentation"]}[sf]
i = {x["snapshot"]: x for x in json.load(open(b))["fragmentation"]}[si]
ok = f["data_bytes"] == i["data_bytes"]
print(f"{S}\t{case}\tforced_read_data_bytes\t{'same' if ok else 'DIFFERENT'} ({f['data_bytes']} vs {i['data_bytes']}); "
      f"its fragmentation: packs {f['packs']}, reads {f['reads']}, read_bytes {f['read_bytes']}; "
      f"check problems {len(json.load(open(a))['problems'])}")
EOF2
        tail -n 1 "$CHECKS" | while IFS=$'\t' read -r _ _ k v; do info "check $k = $v"; done
        drop_repo "f$RUNS"
        # 2. the content: the incremental snapshot restored and compared with the image
        avail=$(df -Pk "$WORKDIR" | awk 'NR==2 {print int($4/1024)}')
        if (( avail > ALLOC / 1048576 + 3072 )); then
            rm -rf -- "$WORKDIR/restore/disk.img"
            run "$S-$CASE-restore" $(C "$LASTI" restore "$SI" --disk disk.img --target "$WORKDIR/restore/disk.img")
            if cmp -s "$WORKDIR/restore/disk.img" "$IMG"; then
                check "$S" "$CASE" restore_cmp "identical to the changed image"
            else
                check "$S" "$CASE" restore_cmp "DIFFERS from the changed image"
            fi
            rm -f -- "$WORKDIR/restore/disk.img"
        else
            check "$S" "$CASE" restore_cmp "skipped (only ${avail} MiB free)"
        fi
        drop_repo "$LASTI"
        # 3. what is really read, under strace (in a fresh copy)
        copy_repo st
        read -r ib ic rb rc < <(strace_reads "$S-$CASE-strace" "$WORKDIR/repo/st" \
            $(C st backup --vm cbt --json --changed-extents "$MAP" "$IMG"))
        check "$S" "$CASE" strace_image_read "$ib bytes in $ic calls"
        check "$S" "$CASE" strace_repo_read "$rb bytes in $rc calls"
        drop_repo st
        # 4. the same without the file catalog
        copy_repo nc
        wait_quiet
        warm "$WORKDIR/repo/nc"
        measure "$S-$CASE-nocat" "$S" "$CASE" i-nocat 1 -- \
            $(C nc backup --vm cbt --json --no-catalog --changed-extents "$MAP" "$IMG")
        drop_repo nc

        phase "$S GiB $CASE: putting the base content back"
        python3 "$PLAN" revert "$IMG" "$CD"
        [[ $(b3sum --no-names "$IMG") == "$BASE_SUM" ]] || die "revert did not restore the base content"
        rm -f -- "$CD/undo.bin"
    done
    drop_repo r0
    rm -f -- "$IMG"
done

# ------------------------------------------------------------ report
phase "writing $OUT"
python3 - "$ROWS" "$CASES" "$CHECKS" "$LOGS" "$WORKDIR" "$RUNS" >"$WORKDIR/tables.md" <<'EOF'
import json, statistics, sys
rows_p, cases_p, checks_p, logs, wd, runs = sys.argv[1:7]
runs = int(runs)
MiB = 2**20
rows = [l.rstrip("\n").split("\t") for l in open(rows_p) if l.strip()]
cases = [l.rstrip("\n").split("\t", 2) for l in open(cases_p) if l.strip()]
cases.sort(key=lambda x: (int(x[0]), x[1]))
checks = {}
for l in open(checks_p):
    if l.strip():
        s, c, k, v = l.rstrip("\n").split("\t", 3)
        checks[(s, c, k)] = v
def js(name):
    return json.load(open(f"{logs}/{name}.out"))
def steps(s, c, st):
    return [r for r in rows if r[0] == s and r[1] == c and r[2] == st]
def med(v):
    return statistics.median(v) if v else float("nan")
def rng(v):
    return f"{min(v):.2f}–{max(v):.2f}" if len(v) > 1 else ""
out = []
P = out.append
P("| size | case | writes | changed MiB (% of data) | (i) wall s | (i) CPU s | (i) read from source MiB | read / changed | (i) fetched from repo MiB (`bytes_from_parent`) | (i) stored MiB | (ii) full re-read wall s | (ii) CPU s | (ii) read MiB | (ii) stored MiB | (ii) / (i) time | tables equal | other CPU s (i / ii, max) |")
P("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
aims = []
detail = []
for s, c, summ in cases:
    sm = json.loads(summ)
    I, F = steps(s, c, "i"), steps(s, c, "ii")
    wi, wf = [float(r[4]) for r in I], [float(r[4]) for r in F]
    ci, cf = [float(r[5]) for r in I], [float(r[5]) for r in F]
    oi, of = [float(r[7]) for r in I], [float(r[7]) for r in F]
    ji = [js(r[8]) for r in I]
    jf = [js(r[8]) for r in F]
    cb = [j["items"][0]["changed_blocks"] for j in ji]
    changed = cb[-1]["changed"]
    read = cb[-1]["bytes_read"]
    fromp = med([x["bytes_from_parent"] for x in cb])
    ratio = read / changed if changed else float("nan")
    speed = med(wf) / med(wi)
    te = checks.get((s, c, "tables_equal"), "?").split(" ")[0]
    P(f"| {s} GiB | {c} | {sm['writes']:,} | {changed / MiB:.1f} ({100 * changed / sm['data']:.2f} %) | "
      f"{med(wi):.2f} | {med(ci):.2f} | {read / MiB:.1f} | {ratio:.2f} | {fromp / MiB:.1f} | "
      f"{med([j['bytes_stored'] for j in ji]) / MiB:.1f} | {med(wf):.2f} | {med(cf):.2f} | "
      f"{med([j['bytes_read'] for j in jf]) / MiB:.0f} | {med([j['bytes_stored'] for j in jf]) / MiB:.1f} | "
      f"**{speed:.1f}×** | {te} | {max(oi):.2f} / {max(of):.2f} |")
    aims.append((s, c, "source bytes read ≤ 4× changed", f"{ratio:.2f}×", ratio <= 4))
    if c == "clustered":
        aims.append((s, c, "(i) ≥ 20× faster than the full re-read (ii)", f"{speed:.1f}×", speed >= 20))
    st_i = checks.get((s, c, "strace_image_read"), "? bytes").split(" ")[0]
    st_r = checks.get((s, c, "strace_repo_read"), "? bytes").split(" ")[0]
    nc = steps(s, c, "i-nocat")
    ncw = float(nc[-1][4]) if nc else float("nan")
    cat = ji[-1].get("catalog") or {}
    att = [open(f"{wd}/attempts-{s}-{c}-{r}").read().strip() for r in range(1, runs + 1)]
    detail.append(
        f"- {s} GiB {c}: {sm['desc']}; data {sm['data'] / MiB:.0f} MiB in {sm['extents']} allocated extents. "
        f"(i) wall {rng(wi) or med(wi)} s over {len(wi)} runs, (ii) {rng(wf) or med(wf)} s; attempts per run {','.join(att)}. "
        f"(i) report: bytes_read {read:,}, changed {changed:,}, skipped {cb[-1]['bytes_skipped']:,}, "
        f"bytes_from_parent {cb[-1]['bytes_from_parent']:,}, bytes_new {ji[-1]['bytes_new']:,}, "
        f"bytes_rewritten {ji[-1]['bytes_rewritten']:,}, catalog walk {cat.get('secs', 0):.2f} s "
        f"fetching {cat.get('bytes_from_parent', 0):,} bytes of the parent's chunks "
        f"({len(cat.get('errors', []))} volume errors); (ii) bytes_rewritten {jf[-1]['bytes_rewritten']:,}. "
        f"strace of (i): {int(st_i) / MiB if st_i.isdigit() else float('nan'):.1f} MiB read from the image file, "
        f"{int(st_r) / MiB if st_r.isdigit() else float('nan'):.1f} MiB from the repository's files. "
        f"(i) with --no-catalog: {ncw:.2f} s. "
        f"Tables: {checks.get((s, c, 'tables_equal'), '?')}; full read afterwards stored bytes_new "
        f"{checks.get((s, c, 'verify_bytes_new'), '?')}; check problems {checks.get((s, c, 'check_problems'), '?')}; "
        f"restore: {checks.get((s, c, 'restore_cmp'), '?')}; forced read (ii): {checks.get((s, c, 'forced_read_data_bytes'), '?')}.")
P("")
P("| size | case | aim | measured | met? |")
P("|---|---|---|---:|---|")
for s, c, a, m, ok in aims:
    P(f"| {s} GiB | {c} | {a} | {m} | {'yes' if ok else '**no**'} |")
P("")
for s in sorted({r[0] for r in rows}, key=int):
    fr = [r for r in rows if r[0] == s and r[2] == "first"]
    if fr:
        j = js(fr[-1][8])
        P(f"- {s} GiB first backup (full read, repo/r0): {float(fr[-1][4]):.2f} s wall, CPU {float(fr[-1][5]):.2f} s, "
          f"other CPU {float(fr[-1][7]):.2f} s; read {j['bytes_read'] / MiB:.0f} MiB, stored {j['bytes_stored'] / MiB:.1f} MiB, "
          f"holes {j['holes_skipped'] / MiB:.0f} MiB.")
out.extend(detail)
print("\n".join(out))
EOF
{
    echo "# cairn changed-block backup benchmark"
    echo
    echo "Run $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname): $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r); workdir $WORKDIR ($(df -T "$WORKDIR" | awk 'NR==2 {print $2}'))."
    echo
    echo '```sh'
    printf '%q ' "$0" "${ARGS[@]}"; echo
    cat "$CMDS"
    echo '```'
    echo
    echo "- cairn: tree $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && [[ -z $(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] || echo ' + uncommitted changes in src'), binary $CAIRN_BIN_ORIG built $(date -u -r "$CAIRN_BIN_ORIG" +%H:%M:%SZ), run from a copy; $(qemu-io --version | head -n1)."
    echo "- (i) = \`backup --changed-extents map.json\`, (ii) = \`backup --force-read\` of the same changed image, each in its own hard-linked copy of the repository after the first backup; medians of $RUNS runs. $(if [[ -n $CG ]]; then echo "Source throttled: each timed step reads $SRC_DEV at most $SOURCE_MBPS MB/s (cgroup-v1 blkio), the page cache dropped before it and only the repository, its index cache and the binary read back"; else echo "Warm page cache"; fi). MiB = 2^20 bytes."
    echo "- 'read from source' = the report's \`items[].changed_blocks.bytes_read\` (the top-level \`bytes_read\` is the same); 'fetched from repo' = \`bytes_from_parent\` (stored, compressed bytes of the parent's chunks around the changes; what the catalog walk fetched is in the details below)."
    echo
    cat "$WORKDIR/tables.md"
    echo
    echo "Checks:"
    echo
    awk -F'\t' '{printf "- %s GiB %s: %s = %s\n", $1, $2, $3, $4}' "$CHECKS"
    echo
    echo "Logs: $LOGS"
} >"$OUT"
echo
cat "$OUT"
phase "done: $OUT"
