#!/usr/bin/env bash
# image-read-bench.sh -- how fast cairn reads sparse image formats, and how much.
#
#   tools/image-read-bench.sh [--size-gib 4] [--workdir /tmp/cairn-read-bench]
#                             [--out read-results.md] [--formats raw,qcow2,...]
#                             [--runs 3] [--seed 1] [--no-build] [--cairn-bin PATH]
#                             [--quiet-wait SECS] [--retries N]
#
# Question: is reading a sparse qcow2 / VMDK / VHDX no slower per byte of
# allocated data than reading the raw image, and does unallocated space cost no
# reads?
#
#   1. cargo build --release (skipped with --no-build / --cairn-bin); cairn runs
#      from a copy in the workdir.
#   2. gen-tree.py content (~60% of the image) + mkimage.sh -> base.img (sparse
#      raw, GPT + ext4), as bench.sh does; qemu-img convert makes
#        qcow2        -O qcow2 (64 KiB clusters, uncompressed)
#        vmdk-sparse  -O vmdk -o subformat=monolithicSparse (64 KiB grains)
#        vmdk-stream  -O vmdk -o subformat=streamOptimized (deflated grains)
#        vhdx         -O vhdx (dynamic)
#      Allocated data per format = sum of `qemu-img map --output=json` extents
#      with data=true and zero=false (what a reader must read).
#   3. Per format, in a fresh repository:
#        a   first backup (reading + chunking + compression + encryption + writing)
#        b!  backup --force-read into the same repository, --runs times (median
#            shown): every chunk is already stored, so this is reading, decoding,
#            chunking and hashing only
#      each timed with GNU time (wall, user+sys CPU, peak RSS).  MB/s = the
#      disk's data (allocated bytes of the raw image, the same content in every
#      format) / wall, so the formats compare per byte of the same data.
#      bytes_read is cairn's own --json count.
#   4. Bytes actually read from the image file: one more --force-read backup
#      (untimed) under `strace -ff -y -s 0 -e trace=read,pread64,readv,preadv,
#      preadv2`; the return values of the calls whose fd resolves (-y) to the
#      image path are summed.  -ff writes one file per thread, so no call is
#      split into unfinished/resumed halves; -y makes the sum exact per file
#      (the repository's and cache's reads are excluded).  cairn reads images
#      with pread only (no mmap), so this sees every byte.
#   5. Check (untimed): the snapshot is restored as raw and compared with
#      base.img (cmp), so a fast but wrong decoder cannot pass.
#   6. markdown table to --out and stdout.
#
# Other processes: the same idle-wait and "other CPU" method as bench.sh; a
# format whose timed steps had other CPU > 0.5 s + 15% of wall is redone in a
# fresh repository, up to --retries times (default 2).  The page cache is not
# dropped: each image is read once with cat before each timed step (warm).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

SIZE_GIB=4
WORKDIR=/tmp/cairn-read-bench
OUT=read-results.md
FORMATS=raw,qcow2,vmdk-sparse,vmdk-stream,vhdx
RUNS=3
SEED=1
BUILD=1
CAIRN_BIN=
QUIET_WAIT=600
RETRIES=2

usage() { sed -n '2,46p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --size-gib) SIZE_GIB=$2; shift 2 ;;
        --workdir) WORKDIR=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --formats) FORMATS=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --seed) SEED=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --cairn-bin) CAIRN_BIN=$2; BUILD=0; shift 2 ;;
        --quiet-wait) QUIET_WAIT=$2; shift 2 ;;
        --retries) RETRIES=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "image-read-bench: unknown argument $1" >&2; usage 2 ;;
    esac
done
[[ $SIZE_GIB =~ ^[0-9]+$ && $SIZE_GIB -ge 1 ]] || { echo "image-read-bench: --size-gib must be an integer >= 1" >&2; exit 2; }
[[ $RUNS =~ ^[0-9]+$ && $RUNS -ge 1 ]] || { echo "image-read-bench: --runs must be an integer >= 1" >&2; exit 2; }
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
case $WORKDIR in /*) ;; *) WORKDIR=$PWD/$WORKDIR ;; esac
WORKDIR=${WORKDIR%/}

BENCH_NAME=image-read-bench
# shellcheck source=tools/bench-lib.sh
source "$HERE/bench-lib.sh"   # phase, info, die, logcmd, run, busy_ticks, wait_quiet

for t in python3 qemu-img sfdisk mkfs.ext4 e2fsck strace; do
    command -v "$t" >/dev/null || die "$t not found"
done
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) not found: apt-get install time"

# ------------------------------------------------------------ workdir
[[ -n $WORKDIR && $WORKDIR != / && $WORKDIR != "$HOME" && $WORKDIR != "$ROOT" ]] ||
    die "refusing to use $WORKDIR as workdir"
if [[ -e $WORKDIR ]]; then
    if [[ -n $(ls -A "$WORKDIR") && ! -e $WORKDIR/.cairn-read-bench ]]; then
        die "$WORKDIR is not empty and was not made by image-read-bench.sh; remove it or pick another --workdir"
    fi
    phase "wiping workdir $WORKDIR"
    rm -rf -- "$WORKDIR"
fi
mkdir -p "$WORKDIR"/{img,repo,cache,logs,strace}
touch "$WORKDIR/.cairn-read-bench"
LOGS=$WORKDIR/logs
ROWS=$WORKDIR/rows.tsv   # format step wall cpu rss other bytes_read
FMTS=$WORKDIR/formats.tsv  # format file_bytes alloc_bytes convert_s file_read calls restored
CMDS=$WORKDIR/commands.txt
: >"$ROWS"; : >"$FMTS"; : >"$CMDS"

export CAIRN_PASSWORD=bench CAIRN_REPOSITORY=$WORKDIR/repo/cairn
export CAIRN_CACHE_DIR=$WORKDIR/cache/cairn
unset CAIRN_PASSWORD_FILE || true
echo "export CAIRN_PASSWORD=bench CAIRN_REPOSITORY=$CAIRN_REPOSITORY CAIRN_CACHE_DIR=$CAIRN_CACHE_DIR" >>"$CMDS"

# Same idle-machine method as bench.sh.
contaminated_since() {
    awk -F'\t' -v n="$1" 'NR > n && $6 > 0.5 + 0.15 * $3 {bad = 1} END {exit !bad}' "$ROWS"
}
json_field() {   # json_field FILE KEY: a number from cairn's --json output
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

# measure NAME FORMAT STEP -- CMD...: GNU time, other CPU, cairn's bytes_read
measure() {
    local name=$1 fmt=$2 step=$3; shift 3
    [[ $1 == -- ]] && shift
    logcmd "$@"
    local tf=$LOGS/$name.time b0 b1
    b0=$(busy_ticks)
    if ! /usr/bin/time -f '%e %U %S %M' -o "$tf" -- "$@" </dev/null \
            >"$LOGS/$name.out" 2>"$LOGS/$name.err"; then
        echo "image-read-bench: command failed: $*" >&2
        tail -n 20 "$LOGS/$name.err" >&2 || true
        exit 1
    fi
    b1=$(busy_ticks)
    local wall user sys rss cpu other br
    read -r wall user sys rss < <(tail -n1 "$tf")
    cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN{printf "%.2f", u+s}')
    other=$(awk -v d=$((b1 - b0)) -v hz="$HZ" -v c="$cpu" 'BEGIN{o = d/hz - c; printf "%.1f", (o < 0 ? 0 : o)}')
    br=$(json_field "$LOGS/$name.out" bytes_read)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$fmt" "$step" "$wall" "$cpu" "$rss" "$other" "$br" >>"$ROWS"
    info "$fmt $step: wall ${wall}s cpu ${cpu}s rss $((rss / 1024))MiB bytes_read $((br / 1048576))MiB other-cpu ${other}s"
}

# ------------------------------------------------------------ build
prepare_cairn

# ------------------------------------------------------------ images
BASE=$WORKDIR/img/base.img
TREE=$WORKDIR/tree
TREE_MIB=$((SIZE_GIB * 1024 * 60 / 100))
phase "generating ${TREE_MIB} MiB of content and a ${SIZE_GIB} GiB raw image"
logcmd python3 "$HERE/gen-tree.py" "$TREE" --size-mib "$TREE_MIB" --seed "$SEED"
python3 "$HERE/gen-tree.py" "$TREE" --size-mib "$TREE_MIB" --seed "$SEED" >"$LOGS/gen-tree.out"
logcmd "$HERE/mkimage.sh" "$BASE" "${SIZE_GIB}G" "$TREE"
"$HERE/mkimage.sh" "$BASE" "${SIZE_GIB}G" "$TREE" >"$LOGS/mkimage.out"
rm -rf -- "$TREE"

img_path() {
    case $1 in
        raw) echo "$BASE" ;;
        qcow2) echo "$WORKDIR/img/disk.qcow2" ;;
        vmdk-sparse) echo "$WORKDIR/img/disk-sparse.vmdk" ;;
        vmdk-stream) echo "$WORKDIR/img/disk-stream.vmdk" ;;
        vhdx) echo "$WORKDIR/img/disk.vhdx" ;;
        *) die "unknown format $1 (raw, qcow2, vmdk-sparse, vmdk-stream, vhdx)" ;;
    esac
}
convert_args() {
    case $1 in
        qcow2) echo "-O qcow2" ;;
        vmdk-sparse) echo "-O vmdk -o subformat=monolithicSparse" ;;
        vmdk-stream) echo "-O vmdk -o subformat=streamOptimized" ;;
        vhdx) echo "-O vhdx" ;;
    esac
}
qemu_fmt() { case $1 in vmdk-*) echo vmdk ;; *) echo "$1" ;; esac; }
now() { date +%s.%N; }

phase "converting with qemu-img"
for f in ${FORMATS//,/ }; do
    p=$(img_path "$f")
    conv=0
    if [[ $f != raw ]]; then
        read -ra args <<<"$(convert_args "$f")"
        logcmd qemu-img convert -f raw "${args[@]}" "$BASE" "$p"
        t0=$(now)
        run "convert-$f" qemu-img convert -f raw "${args[@]}" "$BASE" "$p"
        conv=$(awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}')
    fi
    # allocated data: what a reader has to read (data=true, zero=false)
    logcmd qemu-img map --output=json -f "$(qemu_fmt "$f")" "$p"
    qemu-img map --output=json -f "$(qemu_fmt "$f")" "$p" >"$LOGS/map-$f.json"
    alloc=$(python3 -c 'import json,sys; print(sum(e["length"] for e in json.load(open(sys.argv[1])) if e["data"] and not e["zero"]))' "$LOGS/map-$f.json")
    fbytes=$(( $(stat -c %b "$p") * $(stat -c %B "$p") ))
    printf '%s\t%s\t%s\t%s\n' "$f" "$fbytes" "$alloc" "$conv" >>"$FMTS"
    info "$f: file $((fbytes / 1048576)) MiB on disk, $((alloc / 1048576)) MiB allocated data (qemu-img map), converted in ${conv}s"
done
LOGICAL=$(stat -c %s "$BASE")

# strace_read FORMAT PATH: bytes read from PATH by one --force-read backup
strace_read() {
    local f=$1 p=$2 d=$WORKDIR/strace/$1
    rm -rf "$d"; mkdir -p "$d"
    logcmd strace -ff -y -s 0 -qq -e trace=read,pread64,readv,preadv,preadv2 -o "$d/t" \
        "$CAIRN_BIN" backup --vm "$f" --force-read --json "$p"
    run "strace-$f" strace -ff -y -s 0 -qq -e trace=read,pread64,readv,preadv,preadv2 -o "$d/t" \
        "$CAIRN_BIN" backup --vm "$f" --force-read --json "$p"
    python3 - "$d" "$(realpath "$p")" <<'EOF'
import os, re, sys
d, path = sys.argv[1], sys.argv[2]
# e.g.  pread64(5</tmp/x/disk.qcow2>, ""..., 1048576, 65536) = 1048576
pat = re.compile(r'^(read|pread64|readv|preadv|preadv2)\(\d+<(.*?)>, .* = (\d+)$')
total = calls = 0
for name in os.listdir(d):
    for line in open(os.path.join(d, name), errors="replace"):
        m = pat.match(line.rstrip("\n"))
        if m and m.group(2) == path:
            total += int(m.group(3)); calls += 1
print(total, calls)
EOF
    rm -rf "$d"
}

# ------------------------------------------------------------ per format
for f in ${FORMATS//,/ }; do
    p=$(img_path "$f")
    attempt=1
    while :; do
        phase "$f (attempt $attempt)"
        n0=$(wc -l <"$ROWS")
        rm -rf -- "$WORKDIR/repo/cairn" "$WORKDIR/cache/cairn"
        run "init-$f" "$CAIRN_BIN" init
        wait_quiet
        cat "$p" >/dev/null
        measure "$f-a" "$f" "a" -- "$CAIRN_BIN" backup --vm "$f" --json "$p"
        for ((r = 1; r <= RUNS; r++)); do
            cat "$p" >/dev/null
            measure "$f-b$r" "$f" "b!" -- "$CAIRN_BIN" backup --vm "$f" --force-read --json "$p"
        done
        if contaminated_since "$n0" && (( attempt <= RETRIES )); then
            info "$f: another process used the CPU during a step; redoing (attempt $((attempt + 1)))"
            head -n "$n0" "$ROWS" >"$ROWS.tmp" && mv "$ROWS.tmp" "$ROWS"
            attempt=$((attempt + 1))
            continue
        fi
        break
    done
    echo "$attempt" >"$WORKDIR/attempts-$f"
    read -r fread fcalls < <(strace_read "$f" "$p")
    info "$f: $fread bytes read from the image file in $fcalls calls (strace)"
    # decoded to the same disk? restore as raw and compare with base.img
    rdir=$WORKDIR/restore
    rm -rf -- "$rdir"
    run "restore-$f" "$CAIRN_BIN" restore "$f:latest" --target "$rdir" --format raw
    rfile=$(find "$rdir" -type f | head -n1)
    if [[ -n $rfile ]] && cmp -s "$rfile" "$BASE"; then newb="= base.img"; else newb="DIFFERS"; fi
    info "$f: restored as raw: $newb"
    rm -rf -- "$rdir"
    awk -F'\t' -v OFS='\t' -v f="$f" -v r="$fread" -v c="$fcalls" -v n="$newb" \
        '$1 == f {$5 = r; $6 = c; $7 = n} {print}' "$FMTS" >"$FMTS.tmp" && mv "$FMTS.tmp" "$FMTS"
    rm -rf -- "$WORKDIR/repo/cairn" "$WORKDIR/cache/cairn"
done

# ------------------------------------------------------------ report
phase "writing $OUT"
python3 - "$ROWS" "$FMTS" "$WORKDIR" "$LOGICAL" >"$WORKDIR/table.md" <<'EOF'
import statistics, sys
rows_p, fmts_p, wd, logical = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rows = [l.rstrip("\n").split("\t") for l in open(rows_p) if l.strip()]
fmts = [l.rstrip("\n").split("\t") for l in open(fmts_p) if l.strip()]
MiB = 2**20
def med(f, step, i):
    v = [float(r[i]) for r in rows if r[0] == f and r[1] == step]
    return statistics.median(v) if v else float("nan")
def spread(f, step):
    v = [float(r[2]) for r in rows if r[0] == f and r[1] == step]
    return "%.2f–%.2f" % (min(v), max(v)) if len(v) > 1 else ""
data = int(next(r[2] for r in fmts if r[0] == "raw")) if any(r[0] == "raw" for r in fmts) else None
print("| format | file on disk MiB | allocated MiB (qemu-img map) | a: first backup s / CPU s / peak RSS MiB | b!: forced re-read s (range) | b! CPU s | b! other CPU s | b! peak RSS MiB | b! MB/s of data | b! time vs raw | cairn bytes_read MiB | read from the file MiB (calls) | read / data | restored as raw |")
print("|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|")
raw_w = None
for f, fbytes, alloc, conv, fread, calls, restored in fmts:
    alloc, fbytes, fread = int(alloc), int(fbytes), int(fread)
    w = med(f, "b!", 2)
    if f == "raw":
        raw_w = w
    rel = "%.2f×" % (w / raw_w) if raw_w else "–"
    att = open(f"{wd}/attempts-{f}").read().strip()
    name = f if att == "1" else f"{f} (attempt {att})"
    print("| %s | %.0f | %.0f | %.2f / %.2f / %.0f | %.2f (%s) | %.2f | %.1f | %.0f | %s | %s | %.0f | %.0f (%s) | %.3f | %s |" % (
        name, fbytes / MiB, alloc / MiB, med(f, "a", 2), med(f, "a", 3), med(f, "a", 4) / 1024,
        w, spread(f, "b!"), med(f, "b!", 3), med(f, "b!", 5), med(f, "b!", 4) / 1024,
        "%.0f" % (data / w / 1e6) if data else "–", rel,
        med(f, "b!", 6) / MiB, fread / MiB, calls, fread / data if data else float("nan"), restored))
EOF
{
    echo "# image read benchmark: ${SIZE_GIB} GiB sparse VM disk in 5 formats"
    echo
    echo "Run $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname): $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM; workdir $WORKDIR."
    echo
    echo '```sh'
    printf '%q ' "$0" --size-gib "$SIZE_GIB" --workdir "$WORKDIR" --out "$OUT" --formats "$FORMATS" --runs "$RUNS" --seed "$SEED"; echo
    cat "$CMDS"
    echo '```'
    echo
    echo "- cairn: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && [[ -z $(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] || echo ' + uncommitted changes in src'), binary $CAIRN_BIN_ORIG built $(date -u -r "$CAIRN_BIN_ORIG" +%H:%M:%SZ); $(qemu-img --version | head -n1); $(strace -V | head -n1)"
    echo "- Logical disk size $LOGICAL bytes. Conversion times (s): $(awk -F'\t' '$1 != "raw" {printf "%s%s %s", sep, $1, $4; sep = ", "}' "$FMTS")."
    echo "- b! = median of $RUNS forced re-reads (range in brackets); MB/s of data = allocated bytes of the raw image (the same disk data in every format) / wall, MB = 10^6 bytes; 'time vs raw' = b! wall / raw's b! wall."
    echo "- 'read / data' = bytes read from the image file / allocated bytes of the raw image (the disk's data): 1.0 means no reads for unallocated space and no overhead."
    echo "- 'read from file' = sum of read/pread64/readv/preadv return values on the image's fd, from strace -ff -y of one more forced re-read (untimed)."
    echo
    cat "$WORKDIR/table.md"
    echo
    echo "Logs: $LOGS"
} >"$OUT"
echo
cat "$OUT"
phase "done: $OUT"
