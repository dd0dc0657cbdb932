#!/usr/bin/env bash
# s3-bench.sh -- cairn on S3 (s3s-fs on loopback) against the same on local disk:
# throughput, request counts per GiB, and prune beside a fleet of four proxies.
#
#   tools/s3-bench.sh [--size-gib 4] [--content-mib 2048] [--runs 3]
#                     [--workdir /tmp/cairn-s3-bench] [--out s3-results.md]
#                     [--fleet-rounds 3] [--fleet-per-round-mib 64] [--seed 1]
#                     [--phases throughput,density,fleet] [--no-build]
#                     [--cairn-bin PATH] [--keep] [--resume]
#                     [--backends local,s3] [--ext s3:http://HOST:PORT/BUCKET]
#
# Phases:
#   1. cargo build --release (skipped with --no-build / --cairn-bin); the binary runs
#      from a copy in the workdir.
#   2. Images (kept in WORKDIR/img and reused when the size, content and seed match):
#      gen-tree.py content (--content-mib) + mkimage.sh -> base.img (sparse raw,
#      GPT + ext4); changed.img = base.img with ~1% of its allocated data rewritten in
#      place by qemu-io (64 KiB..1 MiB extents, half random, half text, plus 4 KiB
#      pattern writes), as bench.sh does.
#   3. throughput: for each backend (local folder; s3s-fs on 127.0.0.1 with its data
#      on the same disk) and each of --runs runs, in a fresh repository and cache:
#        backup a (base.img), backup c (changed.img copied over the same path),
#        restore latest to a folder (verified with cmp, untimed), check --read-data,
#        forget --keep-last 1 --prune, prune --grace 0s.
#      Each step under GNU time (wall, user+sys CPU, peak RSS); MB/s = allocated
#      bytes of the image / wall; on S3 also the CPU s3s-fs used during the step
#      (/proc/PID/stat) and the requests it served, by kind, from its own log
#      (RUST_LOG=s3s::service=debug prints one `req:` line per HTTP request, keep-alive
#      or not: method, URI and headers, so ranged GETs and PUT sizes are seen).
#   4. density: a local unencrypted repository of base.img at --chunk-size 4096 (many
#      blobs), to measure the index cache (index-v3.redb) and index/ bytes per blob, and
#      the peak RSS of a prune (mark + plan over every blob, nothing to free).
#   5. fleet: four proxies (separate CAIRN_CACHE_DIR each) back up four VMs (qcow2
#      linked clones of a copy of base.img = the same OS, each with --fleet-per-round-mib
#      of its own random data per round written with qemu-io; disks of 4 GiB each
#      while the workdir holds one copy of the OS) into one repository, all four at once, for
#      --fleet-rounds rounds; then `forget --keep-last 1 --prune` (records what is
#      unused) and `prune --grace 0s` (sweeps it), each timed, with the repository size
#      before and after and the index cache size of each proxy. Local and S3.
#   6. markdown to --out and stdout: medians and min-max over the runs.
# --ext URL adds a third backend "ext", any S3 endpoint (e.g. Ceph RGW from
# tools/ceph-rgw.sh), with keys from EXT_AWS_ACCESS_KEY_ID / EXT_AWS_SECRET_ACCESS_KEY; its
# repositories go under URL/bench-<time>/ and are left there; no request counts for it.
# --backends picks among local, s3, ext (default: local,s3, plus ext with --ext).
# --resume keeps the rows and logs of an earlier run in the same workdir (e.g. to add
# --phases fleet to a run that stopped), and the report covers both.
#
# The page cache is not dropped (warm-cache figures; the image is read with cat before
# each backup). The machine may be shared: "other CPU" is the whole machine's busy CPU
# during a step minus the step's own (and s3s-fs's, on S3).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

SIZE_GIB=4
CONTENT_MIB=2048
RUNS=3
WORKDIR=/tmp/cairn-s3-bench
OUT=s3-results.md
FLEET_ROUNDS=3
FLEET_PER_ROUND_MIB=64
SEED=1
PHASES=throughput,density,fleet
BUILD=1
CAIRN_BIN=
KEEP=0
QUIET_WAIT=0
RESUME=0
BACKENDS_ARG=
EXT_URL=

usage() { sed -n '2,40p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --size-gib) SIZE_GIB=$2; shift 2 ;;
        --content-mib) CONTENT_MIB=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --workdir) WORKDIR=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --fleet-rounds) FLEET_ROUNDS=$2; shift 2 ;;
        --fleet-per-round-mib) FLEET_PER_ROUND_MIB=$2; shift 2 ;;
        --seed) SEED=$2; shift 2 ;;
        --phases) PHASES=$2; shift 2 ;;
        --backends) BACKENDS_ARG=$2; shift 2 ;;
        --ext) EXT_URL=${2%/}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --cairn-bin) CAIRN_BIN=$2; BUILD=0; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --resume) RESUME=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "s3-bench: unknown argument $1" >&2; usage 2 ;;
    esac
done
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
case $WORKDIR in /*) ;; *) WORKDIR=$PWD/$WORKDIR ;; esac
WORKDIR=${WORKDIR%/}
have_phase() { [[ ",$PHASES," == *",$1,"* ]]; }

BENCH_NAME=s3-bench
# shellcheck source=tools/bench-lib.sh
source "$HERE/bench-lib.sh"   # phase, info, die, logcmd, run, busy_ticks, prepare_cairn

for t in python3 qemu-io sfdisk mkfs.ext4 e2fsck cmp du s3s-fs; do
    command -v "$t" >/dev/null || die "$t not found (s3s-fs: cargo install s3s-fs --features binary)"
done
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) not found: apt-get install time"

# ------------------------------------------------------------ workdir
[[ -n $WORKDIR && $WORKDIR != / && $WORKDIR != "$HOME" && $WORKDIR != "$ROOT" ]] ||
    die "refusing to use $WORKDIR as workdir"
if [[ -e $WORKDIR && -n $(ls -A "$WORKDIR") && ! -e $WORKDIR/.cairn-s3-bench ]]; then
    die "$WORKDIR is not empty and was not made by s3-bench.sh"
fi
mkdir -p "$WORKDIR"
touch "$WORKDIR/.cairn-s3-bench"
# everything but the images is redone (with --resume: but the rows and logs too)
if (( RESUME )); then
    find "$WORKDIR" -mindepth 1 -maxdepth 1 ! -name img ! -name .cairn-s3-bench ! -name logs \
        ! -name commands.txt ! -name rows.tsv ! -name extra.tsv -exec rm -rf -- {} +
else
    find "$WORKDIR" -mindepth 1 -maxdepth 1 ! -name img ! -name .cairn-s3-bench -exec rm -rf -- {} +
fi
mkdir -p "$WORKDIR"/{img,logs,tmp,run}
LOGS=$WORKDIR/logs
CMDS=$WORKDIR/commands.txt
ROWS=$WORKDIR/rows.tsv     # section backend run step wall cpu rss other srvcpu mbps requests-json note
EXTRA=$WORKDIR/extra.tsv   # key value, for the report
if (( ! RESUME )); then : >"$CMDS"; : >"$ROWS"; : >"$EXTRA"; fi
export CAIRN_PASSWORD=bench
unset CAIRN_PASSWORD_FILE CAIRN_REPOSITORY CAIRN_CACHE_DIR || true
S3_KEY=cairnbench S3_SECRET=cairnbenchsecret
export AWS_ACCESS_KEY_ID=$S3_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET

S3_PID=
cleanup() {
    if [[ -n $S3_PID ]] && kill -0 "$S3_PID" 2>/dev/null; then kill "$S3_PID"; wait "$S3_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

prepare_cairn

# ------------------------------------------------------------ images
IMG=$WORKDIR/img/base.img
IMG2=$WORKDIR/img/changed.img
STAMP="size=$SIZE_GIB content=$CONTENT_MIB seed=$SEED v1"
if [[ -f $IMG && -f $IMG2 && $(cat "$WORKDIR/img/stamp" 2>/dev/null) == "$STAMP" ]]; then
    phase "reusing images in $WORKDIR/img ($STAMP)"
else
    rm -f "$WORKDIR/img/stamp" "$IMG2"
    if [[ ! -f $IMG || $(cat "$WORKDIR/img/base-stamp" 2>/dev/null) != "$STAMP" ]]; then
        phase "generating $CONTENT_MIB MiB of VM-like content and a $SIZE_GIB GiB image"
        rm -rf "$WORKDIR/tree"
        logcmd python3 "$HERE/gen-tree.py" "$WORKDIR/tree" --size-mib "$CONTENT_MIB" --seed "$SEED"
        python3 "$HERE/gen-tree.py" "$WORKDIR/tree" --size-mib "$CONTENT_MIB" --seed "$SEED" >"$LOGS/gen-tree.out"
        logcmd "$HERE/mkimage.sh" "$IMG" "${SIZE_GIB}G" "$WORKDIR/tree"
        "$HERE/mkimage.sh" "$IMG" "${SIZE_GIB}G" "$WORKDIR/tree" >"$LOGS/mkimage.out"
        rm -rf "$WORKDIR/tree"
        echo "$STAMP" >"$WORKDIR/img/base-stamp"
    fi
    phase "changed.img: ~1% of the allocated data rewritten in place with qemu-io"
    cp --sparse=always "$IMG" "$IMG2"
    python3 - "$IMG2" "$SEED" "$WORKDIR/tmp" >"$WORKDIR/tmp/qemu-io.cmds" 2>"$WORKDIR/img/mutate.txt" <<'EOF'
import math, os, random, sys
img, seed, tmp = sys.argv[1], sys.argv[2], sys.argv[3]
rng = random.Random(f"cairn-s3-bench/{seed}/mutate")
size = os.path.getsize(img)
fd = os.open(img, os.O_RDONLY)
extents, pos = [], 0
while pos < size:
    try:
        d = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        break
    h = os.lseek(fd, d, os.SEEK_HOLE)
    extents.append((d, h - d)); pos = h
os.close(fd)
data = sum(l for _, l in extents)
budget = data // 100
lo, hi = 1 << 20, size - (1 << 20)
def pick(n):
    r = rng.randrange(data)
    for off, l in extents:
        if r < l:
            o = off + r; break
        r -= l
    o -= o % 4096
    return max(lo, min(o, hi - n))
cmds, done, k = [], 0, 0
while done < budget * 9 // 10:
    n = int(math.exp(rng.uniform(math.log(64 << 10), math.log(1 << 20)))); n -= n % 4096
    src = os.path.join(tmp, f"extent-{k:04d}.bin"); k += 1
    if rng.random() < 0.5:
        buf = rng.randbytes(n)
    else:
        buf = "".join("%d log line %d\n" % (rng.getrandbits(40), i) for i in range(n // 16)).encode()[:n].ljust(n, b"\n")
    open(src, "wb").write(buf)
    cmds.append(f"write -q -s {src} {pick(n)} {n}"); done += n
small = (budget - done) // 4096
for _ in range(small):
    cmds.append(f"write -q -P 0x{rng.randrange(1, 256):02x} {pick(4096)} 4096")
print("\n".join(cmds))
sys.stderr.write(f"{k} extents ({done / 2**20:.1f} MiB) + {small} x 4 KiB writes = "
                 f"{(done + small * 4096) / 2**20:.1f} MiB, {100 * (done + small * 4096) / data:.2f}% "
                 f"of {data / 2**20:.0f} MiB allocated\n")
EOF
    logcmd qemu-io -f raw "$IMG2" "<" qemu-io.cmds
    qemu-io -f raw "$IMG2" <"$WORKDIR/tmp/qemu-io.cmds" >"$LOGS/qemu-io.out" 2>&1 || die "qemu-io failed"
    rm -f "$WORKDIR"/tmp/extent-*.bin
    echo "$STAMP" >"$WORKDIR/img/stamp"
fi
IMG_BYTES=$(stat -c %s "$IMG")
IMG_ALLOC=$(( $(stat -c %b "$IMG") * $(stat -c %B "$IMG") ))
IMG2_ALLOC=$(( $(stat -c %b "$IMG2") * $(stat -c %B "$IMG2") ))
info "base.img $IMG_BYTES bytes, $IMG_ALLOC allocated; changed.img $IMG2_ALLOC allocated; $(cat "$WORKDIR/img/mutate.txt")"

# ------------------------------------------------------------ S3 server and request counting
cat >"$WORKDIR/s3count.py" <<'EOF'
# s3count.py LOG FROM TO: the requests s3s-fs logged between byte offsets FROM and TO of
# its log, by kind, as JSON. One `req: Request { method: M, uri: U, ... headers: {...}`
# line per HTTP request.
import json, re, sys
path, a, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, "rb") as f:
    f.seek(a)
    text = f.read(b - a).decode("utf-8", "replace")
c = {"PUT": 0, "GET": 0, "GET_range": 0, "HEAD": 0, "LIST": 0, "DELETE": 0, "other": 0,
     "put_bytes": 0, "range_bytes": 0, "put_data": 0, "put_index": 0, "put_other": 0,
     "get_data": 0, "get_index": 0, "get_snap": 0, "get_other": 0}
for m in re.finditer(r"s3s::service: req: Request \{ method: (\w+), uri: (\S+), version: [^,]+, headers: \{(.*?)\}, body", text):
    meth, uri, hdr = m.groups()
    if meth == "GET" and "list-type=" in uri:
        c["LIST"] += 1
    elif meth == "GET":
        r = re.search(r'"range": "bytes=(\d+)-(\d+)"', hdr)
        if r:
            c["GET_range"] += 1
            c["range_bytes"] += int(r.group(2)) - int(r.group(1)) + 1
        else:
            c["GET"] += 1
        k = "get_data" if "/data/" in uri else "get_index" if "/index/" in uri else "get_snap" if "/snapshots/" in uri else "get_other"
        c[k] += 1
    elif meth == "PUT":
        c["PUT"] += 1
        r = re.search(r'"content-length": "(\d+)"', hdr)
        if r:
            c["put_bytes"] += int(r.group(1))
        k = "put_data" if "/data/" in uri else "put_index" if "/index/" in uri else "put_other"
        c[k] += 1
    elif meth == "HEAD":
        c["HEAD"] += 1
    elif meth == "DELETE" or (meth == "POST" and "delete" in uri):
        c["DELETE"] += 1
    else:
        c["other"] += 1
print(json.dumps(c))
EOF
S3_ROOT=$WORKDIR/s3root
S3_LOG=$LOGS/s3s-fs.log
start_s3() {
    mkdir -p "$S3_ROOT/bench"
    local p
    p=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    logcmd env RUST_LOG=s3s::service=debug s3s-fs --host 127.0.0.1 --port "$p" --access-key "$S3_KEY" --secret-key "$S3_SECRET" "$S3_ROOT"
    RUST_LOG=s3s::service=debug s3s-fs --host 127.0.0.1 --port "$p" \
        --access-key "$S3_KEY" --secret-key "$S3_SECRET" "$S3_ROOT" >>"$S3_LOG" 2>&1 &
    S3_PID=$!
    S3_PORT=$p
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break
        sleep 0.1
    done
    info "s3s-fs $(s3s-fs --version | awk '{print $2}') on 127.0.0.1:$p (pid $S3_PID), data in $S3_ROOT"
}
srv_ticks() { [[ -n $S3_PID ]] && awk '{print $14 + $15}' "/proc/$S3_PID/stat" 2>/dev/null || echo 0; }
log_size() { stat -c %s "$S3_LOG" 2>/dev/null || echo 0; }

# measure SECTION BACKEND RUN STEP BYTES -- CMD...: run CMD under GNU time, record a row
# (MB/s = BYTES / wall; BYTES 0: none). Output in logs/SECTION-BACKEND-RUN-STEP.out/.err.
LAST_OUT=
measure() {
    local sec=$1 be=$2 r=$3 step=$4 bytes=$5; shift 5
    [[ $1 == -- ]] && shift
    local name="$sec-$be-$r-${step// /_}"
    logcmd "$@"
    local tf=$LOGS/$name.time b0 b1 s0 s1 l0 l1
    b0=$(busy_ticks); s0=$(srv_ticks); l0=$(log_size)
    if ! /usr/bin/time -f '%e %U %S %M' -o "$tf" -- "$@" </dev/null >"$LOGS/$name.out" 2>"$LOGS/$name.err"; then
        echo "s3-bench: command failed: $*" >&2; tail -n 20 "$LOGS/$name.err" >&2; exit 1
    fi
    sleep 0.2   # let s3s-fs finish writing its log lines
    b1=$(busy_ticks); s1=$(srv_ticks); l1=$(log_size)
    LAST_OUT=$LOGS/$name.out
    local wall user sys rss
    read -r wall user sys rss < <(tail -n1 "$tf")
    local cpu srv other mbps req="{}"
    cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN{printf "%.2f", u+s}')
    srv=$(awk -v d=$((s1 - s0)) -v hz="$HZ" 'BEGIN{printf "%.2f", d/hz}')
    other=$(awk -v d=$((b1 - b0)) -v hz="$HZ" -v c="$cpu" -v s="$srv" 'BEGIN{o = d/hz - c - s - 0.2; printf "%.1f", (o < 0 ? 0 : o)}')
    mbps=$(awk -v b="$bytes" -v w="$wall" 'BEGIN{ if (b > 0 && w > 0) printf "%.0f", b/w/1e6; else print "-" }')
    if [[ $be == s3 ]]; then req=$(python3 "$WORKDIR/s3count.py" "$S3_LOG" "$l0" "$l1"); fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sec" "$be" "$r" "$step" "$wall" "$cpu" \
        "$rss" "$other" "$srv" "$mbps" "$req" >>"$ROWS"
    info "$be run $r $step: wall ${wall}s cpu ${cpu}s rss $((rss / 1024))MiB ${mbps}MB/s server-cpu ${srv}s other ${other}s $([[ $be == s3 ]] && echo "req $req")"
}

# repo_url BACKEND NAME: the repository URL; repo_dir: where its files are
EXT_RUN=bench-$(date -u +%Y%m%dT%H%M%S)
repo_url() {
    case $1 in
        s3) echo "s3:http://127.0.0.1:$S3_PORT/bench/$2" ;;
        ext) echo "$EXT_URL/$EXT_RUN/$2" ;;
        *) echo "$WORKDIR/repo/$2" ;;
    esac
}
# where a repository's files are on this machine (none for ext: du then reports nothing)
repo_dir() {
    case $1 in
        s3) echo "$S3_ROOT/bench/$2" ;;
        ext) echo "$WORKDIR/ext-not-local/$2" ;;
        *) echo "$WORKDIR/repo/$2" ;;
    esac
}
# use_keys BACKEND: the S3 keys of that backend in the environment
use_keys() {
    if [[ $1 == ext ]]; then
        export AWS_ACCESS_KEY_ID=${EXT_AWS_ACCESS_KEY_ID:?set EXT_AWS_ACCESS_KEY_ID for --ext}
        export AWS_SECRET_ACCESS_KEY=${EXT_AWS_SECRET_ACCESS_KEY:?set EXT_AWS_SECRET_ACCESS_KEY for --ext}
    else
        export AWS_ACCESS_KEY_ID=$S3_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET
    fi
}
warm() { cat "$@" >/dev/null; }
DISK=$WORKDIR/data/disk.img
extra() { printf '%s\t%s\n' "$1" "$2" >>"$EXTRA"; }
json_field() { python3 -c 'import json,sys; t=open(sys.argv[1]).read(); j=json.loads(t[t.index("{"):]); print(j.get(sys.argv[2], ""))' "$1" "$2"; }

if [[ -n $BACKENDS_ARG ]]; then IFS=, read -r -a BACKENDS <<<"$BACKENDS_ARG"
else BACKENDS=(local s3); [[ -n $EXT_URL ]] && BACKENDS+=(ext); fi
for be in "${BACKENDS[@]}"; do
    case $be in local|s3) ;; ext) [[ $EXT_URL == s3:* ]] || die "backend ext needs --ext s3:http://HOST:PORT/BUCKET" ;;
        *) die "unknown backend $be" ;; esac
done
start_s3

# ------------------------------------------------------------ throughput
if have_phase throughput; then
    for r in $(seq 1 "$RUNS"); do
        for be in "${BACKENDS[@]}"; do
            phase "throughput: $be, run $r of $RUNS"
            use_keys "$be"
            export CAIRN_REPOSITORY; CAIRN_REPOSITORY=$(repo_url "$be" "t$r")
            export CAIRN_CACHE_DIR=$WORKDIR/cache/t-$be-$r
            mkdir -p "$WORKDIR/repo" "$WORKDIR/data"
            run "init-$be-$r" "$CAIRN_BIN" init
            rm -f "$DISK"; cp --sparse=always "$IMG" "$DISK"; warm "$DISK"
            measure tp "$be" "$r" "backup a" "$IMG_ALLOC" -- "$CAIRN_BIN" backup --json --vm bench "$DISK"
            extra "stored-a-$be-$r" "$(json_field "$LAST_OUT" bytes_stored)"
            cp --sparse=always "$IMG2" "$DISK"; warm "$DISK"
            measure tp "$be" "$r" "backup c" "$IMG2_ALLOC" -- "$CAIRN_BIN" backup --json --vm bench "$DISK"
            extra "stored-c-$be-$r" "$(json_field "$LAST_OUT" bytes_stored)"
            out=$WORKDIR/restore; rm -rf "$out"
            measure tp "$be" "$r" "restore" "$IMG2_ALLOC" -- "$CAIRN_BIN" restore bench:latest --target "$out" --json
            f=$(find "$out" -type f | head -n1)
            cmp -s "$f" "$IMG2" || die "restore of run $r on $be differs from changed.img"
            rm -rf "$out"
            measure tp "$be" "$r" "check --read-data" "$IMG_ALLOC" -- "$CAIRN_BIN" check --json --read-data
            extra "blobs-$be-$r" "$(json_field "$LAST_OUT" blobs)"
            extra "packs-$be-$r" "$(json_field "$LAST_OUT" packs)"
            extra "cache-$be-$r" "$(stat -c %s "$CAIRN_CACHE_DIR"/*/index-v3.redb)"
            extra "indexdir-$be-$r" "$(du -sb "$(repo_dir "$be" "t$r")/index" | cut -f1)"
            extra "repo-$be-$r" "$(du -sb "$(repo_dir "$be" "t$r")" | cut -f1)"
            measure tp "$be" "$r" "forget --keep-last 1 --prune" 0 -- "$CAIRN_BIN" forget --keep-last 1 --prune
            measure tp "$be" "$r" "prune --grace 0s" 0 -- "$CAIRN_BIN" prune --grace 0s
            extra "repo-after-prune-$be-$r" "$(du -sb "$(repo_dir "$be" "t$r")" | cut -f1)"
            rm -rf -- "$(repo_dir "$be" "t$r")" "$CAIRN_CACHE_DIR" "$DISK"
        done
    done
fi

# ------------------------------------------------------------ density
if have_phase density; then
    phase "density: index cache bytes per blob (local, unencrypted, 4 KiB chunks)"
    export CAIRN_REPOSITORY=$WORKDIR/repo/density CAIRN_CACHE_DIR=$WORKDIR/cache/density
    run density-init "$CAIRN_BIN" init --encryption none --chunk-size 4096
    measure density local 1 "backup a, 4 KiB chunks" "$IMG_ALLOC" -- "$CAIRN_BIN" backup --json --vm bench "$IMG"
    run density-check "$CAIRN_BIN" check --json
    measure density local 1 "prune --grace 0s (nothing to free)" 0 -- "$CAIRN_BIN" prune --grace 0s
    measure density local 1 "check (no --read-data)" 0 -- "$CAIRN_BIN" check --json
    extra "density-blobs" "$(json_field "$LOGS/density-check.out" blobs)"
    extra "density-packs" "$(json_field "$LOGS/density-check.out" packs)"
    extra "density-index-files" "$(json_field "$LOGS/density-check.out" index_files)"
    extra "density-cache" "$(stat -c %s "$CAIRN_CACHE_DIR"/*/index-v3.redb)"
    extra "density-indexdir" "$(du -sb "$WORKDIR/repo/density/index" | cut -f1)"
    extra "density-snapshot" "$(du -sb "$WORKDIR/repo/density/snapshots" | cut -f1)"
    rm -rf -- "$WORKDIR/repo/density" "$CAIRN_CACHE_DIR"
fi

# ------------------------------------------------------------ fleet
if have_phase fleet; then
    VMS=4
    mkdir -p "$WORKDIR/fleet"
    for be in "${BACKENDS[@]}"; do
        phase "fleet: $VMS proxies, $FLEET_ROUNDS rounds, $be"
        use_keys "$be"
        export CAIRN_REPOSITORY; CAIRN_REPOSITORY=$(repo_url "$be" fleet)
        unset CAIRN_CACHE_DIR
        CAIRN_CACHE_DIR=$WORKDIR/cache/fleet-$be-0 run "fleet-init-$be" "$CAIRN_BIN" init
        cp --sparse=always "$IMG" "$WORKDIR/fleet/os.img"
        for p in $(seq 0 $((VMS - 1))); do
            qemu-img create -q -f qcow2 -b os.img -F raw "$WORKDIR/fleet/vm$p.qcow2"
        done
        warm "$WORKDIR/fleet/os.img"
        osend=$(( IMG_BYTES * 3 / 4 ))
        per=$(( FLEET_PER_ROUND_MIB * 1048576 ))
        for round in $(seq 1 "$FLEET_ROUNDS"); do
            for p in $(seq 0 $((VMS - 1))); do
                python3 -c 'import random,sys; sys.stdout.buffer.write(random.Random(sys.argv[1]).randbytes(int(sys.argv[2])))' \
                    "vm$p/round$round/$SEED" "$per" >"$WORKDIR/tmp/own.bin"
                qemu-io -f qcow2 "$WORKDIR/fleet/vm$p.qcow2" -c "write -q -s $WORKDIR/tmp/own.bin $((osend + (round - 1) * per)) $per" >/dev/null
                warm "$WORKDIR/fleet/vm$p.qcow2"
            done
            rm -f "$WORKDIR/tmp/own.bin"
            # the four proxies at once; the round is timed as a whole (request counts too)
            b0=$(busy_ticks); s0=$(srv_ticks); l0=$(log_size); t0=$(date +%s.%N)
            pids=()
            for p in $(seq 0 $((VMS - 1))); do
                logcmd env "CAIRN_CACHE_DIR=$WORKDIR/cache/fleet-$be-$p" "$CAIRN_BIN" backup --json --vm "vm$p" "$WORKDIR/fleet/vm$p.qcow2" "&"
                CAIRN_CACHE_DIR=$WORKDIR/cache/fleet-$be-$p /usr/bin/time -f '%e %U %S %M' \
                    -o "$LOGS/fleet-$be-r$round-p$p.time" -- "$CAIRN_BIN" backup --json --vm "vm$p" \
                    "$WORKDIR/fleet/vm$p.qcow2" </dev/null >"$LOGS/fleet-$be-r$round-p$p.out" 2>"$LOGS/fleet-$be-r$round-p$p.err" &
                pids+=($!)
            done
            for pid in "${pids[@]}"; do wait "$pid" || die "a fleet backup failed (logs $LOGS/fleet-$be-r$round-*)"; done
            sleep 0.2
            t1=$(date +%s.%N); b1=$(busy_ticks); s1=$(srv_ticks); l1=$(log_size)
            wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')
            cpu=$(cat "$LOGS"/fleet-"$be"-r"$round"-p*.time | awk '{c += $2 + $3} END {printf "%.2f", c}')
            rss=$(cat "$LOGS"/fleet-"$be"-r"$round"-p*.time | awk '$4 > m {m = $4} END {print m}')
            srv=$(awk -v d=$((s1 - s0)) -v hz="$HZ" 'BEGIN{printf "%.2f", d/hz}')
            other=$(awk -v d=$((b1 - b0)) -v hz="$HZ" -v c="$cpu" -v s="$srv" 'BEGIN{o = d/hz - c - s - 0.2; printf "%.1f", (o < 0 ? 0 : o)}')
            mbps=$(awk -v b=$(( (IMG_ALLOC + round * per) * VMS)) -v w="$wall" 'BEGIN{printf "%.0f", b/w/1e6}')
            req="{}"; [[ $be == s3 ]] && req=$(python3 "$WORKDIR/s3count.py" "$S3_LOG" "$l0" "$l1")
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' fleet "$be" 1 "round $round: 4 backups at once" \
                "$wall" "$cpu" "$rss" "$other" "$srv" "$mbps" "$req" >>"$ROWS"
            info "$be round $round: wall ${wall}s cpu ${cpu}s max-rss $((rss / 1024))MiB ${mbps}MB/s req $req"
        done
        extra "fleet-repo-before-$be" "$(du -sb "$(repo_dir "$be" fleet)" | cut -f1)"
        for p in $(seq 0 $((VMS - 1))); do
            extra "fleet-cache-$be-$p" "$(stat -c %s "$WORKDIR/cache/fleet-$be-$p"/*/index-v3.redb)"
        done
        export CAIRN_CACHE_DIR=$WORKDIR/cache/fleet-$be-0
        run "fleet-check-before-$be" "$CAIRN_BIN" check --json
        extra "fleet-blobs-$be" "$(json_field "$LOGS/fleet-check-before-$be.out" blobs)"
        extra "fleet-packs-$be" "$(json_field "$LOGS/fleet-check-before-$be.out" packs)"
        extra "fleet-snapshots-$be" "$(json_field "$LOGS/fleet-check-before-$be.out" snapshots)"
        measure fleet "$be" 1 "forget --keep-last 1 --prune" 0 -- "$CAIRN_BIN" forget --keep-last 1 --prune
        extra "fleet-repo-mid-$be" "$(du -sb "$(repo_dir "$be" fleet)" | cut -f1)"
        measure fleet "$be" 1 "prune --grace 0s" 0 -- "$CAIRN_BIN" prune --grace 0s
        extra "fleet-repo-after-$be" "$(du -sb "$(repo_dir "$be" fleet)" | cut -f1)"
        # every proxy's cache catches up with what prune rewrote
        CAIRN_CACHE_DIR=$WORKDIR/cache/fleet-$be-1 measure fleet "$be" 1 "proxy 1: snapshots after prune" 0 -- "$CAIRN_BIN" snapshots --json
        run "fleet-check-after-$be" "$CAIRN_BIN" check --json
        grep -q '"problems": \[\]' "$LOGS/fleet-check-after-$be.out" || die "fleet check after prune found problems ($be)"
        extra "fleet-blobs-after-$be" "$(json_field "$LOGS/fleet-check-after-$be.out" blobs)"
        extra "fleet-cache-after-$be-0" "$(stat -c %s "$WORKDIR/cache/fleet-$be-0"/*/index-v3.redb)"
        rm -rf -- "$(repo_dir "$be" fleet)" "$WORKDIR"/cache/fleet-"$be"-*
    done
    rm -rf "$WORKDIR/fleet"
fi

# ------------------------------------------------------------ report
phase "writing $OUT"
export IMG_BYTES IMG_ALLOC IMG2_ALLOC RUNS FLEET_ROUNDS FLEET_PER_ROUND_MIB
python3 - "$ROWS" "$EXTRA" "$CMDS" "$WORKDIR/img/mutate.txt" >"$OUT.body" <<'EOF'
import json, os, statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
extra = dict(l.rstrip("\n").split("\t", 1) for l in open(sys.argv[2]) if "\t" in l)
alloc = int(os.environ["IMG_ALLOC"]); alloc2 = int(os.environ["IMG2_ALLOC"])
GiB = 2**30
def med(xs):
    xs = [float(x) for x in xs if x not in ("", "-")]
    if not xs:
        return "-"
    m = statistics.median(xs)
    return f"{m:.2f}" if len(xs) == 1 else f"{m:.2f} ({min(xs):.2f}–{max(xs):.2f})"
def medi(xs, f=lambda v: v, fmt="{:.0f}"):
    xs = [f(float(x)) for x in xs if x not in ("", "-")]
    if not xs:
        return "-"
    m = statistics.median(xs)
    return fmt.format(m) if len(xs) == 1 else (fmt + " (" + fmt + "–" + fmt + ")").format(m, min(xs), max(xs))
def table(section):
    steps = []
    for r in rows:
        if r[0] == section and (r[1], r[3]) not in steps:
            steps.append((r[1], r[3]))
    print("| backend | step | runs | wall s | CPU s | peak RSS MiB | MB/s | s3s-fs CPU s | other CPU s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for be, st in steps:
        rs = [r for r in rows if r[0] == section and r[1] == be and r[3] == st]
        print(f"| {be} | {st} | {len(rs)} | {med([r[4] for r in rs])} | {med([r[5] for r in rs])} | "
              f"{medi([r[6] for r in rs], lambda v: v / 1024)} | {medi([r[9] for r in rs])} | "
              f"{med([r[8] for r in rs]) if be == 's3' else '-'} | {med([r[7] for r in rs])} |")
def reqtable(section, per):
    print("| step | PUT (data/index/other) | GET whole | GET ranged | HEAD | LIST | DELETE | PUT MiB | ranged GET MiB | per GiB (PUT / GET+ranged / LIST) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    seen = []
    for r in rows:
        if r[0] == section and r[1] == "s3" and r[3] not in seen:
            seen.append(r[3])
    for st in seen:
        rs = [json.loads(r[10]) for r in rows if r[0] == section and r[1] == "s3" and r[3] == st]
        def m(k):
            return statistics.median([x[k] for x in rs])
        g = per.get(st)
        pg = "-" if not g else f"{m('PUT') / g:.1f} / {(m('GET') + m('GET_range')) / g:.1f} / {m('LIST') / g:.1f}"
        print(f"| {st} | {m('PUT'):.0f} ({m('put_data'):.0f}/{m('put_index'):.0f}/{m('put_other'):.0f}) | {m('GET'):.0f} | "
              f"{m('GET_range'):.0f} | {m('HEAD'):.0f} | {m('LIST'):.0f} | {m('DELETE'):.0f} | "
              f"{m('put_bytes') / 2**20:.1f} | {m('range_bytes') / 2**20:.1f} | {pg} |")
    if len(set(len([r for r in rows if r[0] == section and r[1] == 's3' and r[3] == st]) for st in seen)) > 0:
        print(f"\n(medians over the runs; per GiB = per GiB of allocated image data the step reads or writes: "
              f"{alloc / GiB:.2f} GiB for backup a and check, {alloc2 / GiB:.2f} GiB for backup c and restore)")
if any(r[0] == "tp" for r in rows):
    print("## Throughput: local folder vs S3 (s3s-fs on loopback, same disk)\n")
    table("tp")
    print("\nMB/s = allocated bytes of the image (10^6 B) / wall time.\n")
    print("### Requests on S3, by kind (one run's counts; medians over the runs)\n")
    reqtable("tp", {"backup a": alloc / GiB, "check --read-data": alloc / GiB,
                    "backup c": alloc2 / GiB, "restore": alloc2 / GiB})
    print()
    for be in ("local", "s3"):
        ks = [k for k in extra if k.startswith(f"blobs-{be}-")]
        if ks:
            r = ks[0].rsplit("-", 1)[1]
            print(f"- {be} run {r}: {extra[f'blobs-{be}-{r}']} blobs in {extra[f'packs-{be}-{r}']} packs after backups a+c; "
                  f"repository {int(extra[f'repo-{be}-{r}']) / 2**20:.1f} MiB, after forget+prune "
                  f"{int(extra[f'repo-after-prune-{be}-{r}']) / 2**20:.1f} MiB; index/ {int(extra[f'indexdir-{be}-{r}']) / 2**10:.0f} KiB; "
                  f"index cache {int(extra[f'cache-{be}-{r}']) / 2**20:.2f} MiB; "
                  f"backup a stored {int(extra[f'stored-a-{be}-{r}']) / 2**20:.1f} MiB, backup c {int(extra[f'stored-c-{be}-{r}']) / 2**20:.1f} MiB")
    print()
if "density-blobs" in extra:
    b = int(extra["density-blobs"])
    print("## Index density (local, --encryption none, --chunk-size 4096)\n")
    print(table("density") or "")
    print(f"\n{b} blobs in {extra['density-packs']} packs and {extra['density-index-files']} index files: "
          f"index cache {int(extra['density-cache']) / 2**20:.1f} MiB = {int(extra['density-cache']) / b:.1f} B/blob; "
          f"index/ {int(extra['density-indexdir']) / 2**20:.1f} MiB = {int(extra['density-indexdir']) / b:.1f} B/blob; "
          f"snapshot file {int(extra['density-snapshot'])} B.")
    pr = [r for r in rows if r[0] == "density" and r[3].startswith("prune")]
    if pr:
        rss = statistics.median(float(r[6]) * 1024 for r in pr); cpu = statistics.median(float(r[5]) for r in pr)
        print(f"Prune over these {b} blobs: peak RSS {rss / 2**20:.0f} MiB = {rss / b:.0f} B/blob (upper bound: "
              f"includes the process's fixed ~70 MiB), CPU {cpu:.2f} s = {cpu / b * 1e6:.1f} µs/blob.")
    print()
if any(r[0] == "fleet" for r in rows):
    print("## Fleet: 4 proxies, then forget --keep-last 1 --prune and prune --grace 0s\n")
    table("fleet")
    print("\nRound rows: wall of the four backups together, CPU summed over the four, RSS the largest of the four, "
          "MB/s = 4 × allocated bytes / wall.\n")
    if any(r[0] == "fleet" and r[1] == "s3" for r in rows):
        print("### Requests on S3 (fleet)\n")
        reqtable("fleet", {})
        print()
    for be in ("local", "s3"):
        if f"fleet-blobs-{be}" in extra:
            caches = [int(extra[f"fleet-cache-{be}-{p}"]) / 2**20 for p in range(4)]
            print(f"- {be}: {extra[f'fleet-snapshots-{be}']} snapshots, {extra[f'fleet-blobs-{be}']} blobs, "
                  f"{extra[f'fleet-packs-{be}']} packs before prune; repository "
                  f"{int(extra[f'fleet-repo-before-{be}']) / 2**20:.0f} MiB before, "
                  f"{int(extra[f'fleet-repo-mid-{be}']) / 2**20:.0f} MiB after forget --prune (records only), "
                  f"{int(extra[f'fleet-repo-after-{be}']) / 2**20:.0f} MiB after prune --grace 0s "
                  f"({extra[f'fleet-blobs-after-{be}']} blobs); index cache per proxy "
                  + ", ".join(f"{c:.2f}" for c in caches) + " MiB")
EOF
python3 - "$ROWS" "$EXTRA" >"$WORKDIR/model.md" <<'EOF' || info "model: not enough measurements (run the throughput and density phases)"
# On-paper model for a large fleet, from this run's sizes. Every assumption is an
# environment variable (MODEL_*), printed with the result.
import json, math, os, statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
extra = dict(l.rstrip("\n").split("\t", 1) for l in open(sys.argv[2]) if "\t" in l)
E = lambda k, d: float(os.environ.get(k, d))
vms = E("MODEL_VMS", 10000); logical = E("MODEL_LOGICAL_BYTES", 1e15)
alloc_frac = E("MODEL_ALLOCATED", 0.5); dedup = E("MODEL_UNIQUE_SHARE", 0.6)
comp = E("MODEL_STORED_PER_UNIQUE", 0.7); change = E("MODEL_DAILY_CHANGE", 0.01)
keep = E("MODEL_SNAPSHOTS_PER_VM", 30); span_share = E("MODEL_CHANGED_SPANS", 1.0)
lat = E("MODEL_GET_LATENCY_S", 0.015); list_lat = E("MODEL_LIST_LATENCY_S", 0.1)
bw = E("MODEL_BANDWIDTH_BPS", 1e9); chunk = 32768; pack = 32 * 2**20; span = 2**30
# measured here
# per-blob costs: the slope between the throughput repositories (32 KiB chunks, fewer
# blobs) and the density one (4 KiB chunks, many), so fixed sizes cancel out
b = int(extra["density-blobs"])
b0 = statistics.median(int(v) for k, v in extra.items() if k.startswith("blobs-local-"))
def slope(big, small):
    return (big - small) / (b - b0)
cache_pb = slope(int(extra["density-cache"]), statistics.median(int(v) for k, v in extra.items() if k.startswith("cache-local-")))
index_pb = slope(int(extra["density-indexdir"]), statistics.median(int(v) for k, v in extra.items() if k.startswith("indexdir-local-")))
pr = [r for r in rows if r[0] == "density" and r[3].startswith("prune")]
pr0 = [r for r in rows if r[0] == "tp" and r[1] == "local" and r[3] == "prune --grace 0s"]
prune_rss_pb = slope(statistics.median(float(r[6]) * 1024 for r in pr), statistics.median(float(r[6]) * 1024 for r in pr0))
prune_cpu_pb = statistics.median(float(r[5]) for r in pr) / b
alloc = logical * alloc_frac; unique0 = alloc * dedup
unique = unique0 + alloc * change * (keep - 1)
stored = unique * comp
blobs = unique / chunk
packs = stored / pack
snaps = vms * keep
per_vm_alloc = alloc / vms
tables_per_snap = math.ceil(logical / vms / span)
entries_per_snap = per_vm_alloc / chunk
table_bytes = entries_per_snap * 37 + tables_per_snap * 5
distinct_tables = vms * tables_per_snap * (1 + (keep - 1) * span_share)
mark_bytes = distinct_tables * table_bytes / tables_per_snap
index_files = vms * keep + blobs / 65536
cache = blobs * cache_pb
index_bytes = blobs * index_pb
lists = math.ceil(packs / 1000) + math.ceil(index_files / 1000) + math.ceil(snaps / 1000) + 4
gets = snaps + 2 * index_files + distinct_tables
t_list = lists * list_lat
t_get = gets * lat
t_bytes = (mark_bytes + 2 * index_bytes) / bw
t_cpu = blobs * prune_cpu_pb
G, T = 1e9, 1e12
print("## On-paper model: %.0f VMs, %.1f PB logical\n" % (vms, logical / 1e15))
print("Assumptions (environment variables of tools/s3-bench.sh; defaults shown):\n")
print(f"- {logical / vms / 2**30:.0f} GiB of disk per VM (MODEL_LOGICAL_BYTES / MODEL_VMS); {alloc_frac:.0%} of it allocated (MODEL_ALLOCATED; the test image: {int(os.environ['IMG_ALLOC']) / int(os.environ['IMG_BYTES']):.0%}).")
print(f"- Unique share after deduplication across the fleet of the first full backups: {dedup:.0%} (MODEL_UNIQUE_SHARE; OS images shared, data not).")
print(f"- Stored bytes per unique byte after zstd-3 and encryption: {comp:.2f} (MODEL_STORED_PER_UNIQUE; the gen-tree image gave {int(extra.get('stored-a-local-1', 0)) / int(os.environ['IMG_ALLOC']):.2f}, real VM data compresses less).")
print(f"- Daily change {change:.0%} of the allocated data, all of it new (MODEL_DAILY_CHANGE); {keep:.0f} snapshots kept per VM (MODEL_SNAPSHOTS_PER_VM).")
print(f"- Share of 1 GiB table spans that change between two snapshots: {span_share:.0%} (MODEL_CHANGED_SPANS; 1% of scattered writes touches every span).")
print(f"- Average chunk 32 KiB, pack 32 MiB, table span 1 GiB, 37 B per chunk in a table (repo-format.md sections 3, 7, 10).")
print(f"- Measured here: index cache {cache_pb:.0f} B/blob, index/ {index_pb:.1f} B/blob, prune peak RSS {prune_rss_pb:.0f} B/blob and CPU {prune_cpu_pb * 1e6:.1f} µs/blob (density phase against the throughput runs: the slope, so fixed sizes cancel).")
print(f"- Store: {lat * 1000:.0f} ms per GET, {list_lat * 1000:.0f} ms per LIST page of 1000 keys, {bw / 1e9:.1f} GB/s (MODEL_GET_LATENCY_S, MODEL_LIST_LATENCY_S, MODEL_BANDWIDTH_BPS); cairn's prune reads one object or range at a time.\n")
print("| quantity | value | how |")
print("|---|---:|---|")
print(f"| allocated data | {alloc / T:,.0f} TB | logical × allocated |")
print(f"| unique data (before compression) | {unique / T:,.0f} TB | first fulls × unique share + {keep - 1:.0f} days of change |")
print(f"| stored | {stored / T:,.0f} TB | × stored per unique |")
print(f"| blobs | {blobs / 1e9:,.1f} billion | unique / 32 KiB |")
print(f"| packs | {packs / 1e6:,.1f} million | stored / 32 MiB |")
print(f"| index files | {index_files / 1e6:,.2f} million | one per backup session kept + one per 65,536 blobs |")
print(f"| snapshots | {snaps / 1e3:,.0f} thousand | VMs × kept |")
print(f"| index cache per proxy | {cache / T:,.2f} TB | blobs × {cache_pb:.0f} B (every proxy indexes every blob) |")
print(f"| index/ in the repository | {index_bytes / T:,.2f} TB | blobs × {index_pb:.1f} B; a new proxy downloads it all |")
print(f"| tables per snapshot | {tables_per_snap} of {table_bytes / tables_per_snap / 1e6:.2f} MB | disk / 1 GiB; allocated / 32 KiB × 37 B |")
print(f"| prune: LIST pages | {lists:,.0f} | data/ + index/ + snapshots/ + small folders, 1000 keys each; {lists * 0.005 / 1000:.2f} USD at 0.005 USD per 1000 |")
print(f"| prune: GETs | {gets / 1e6:,.1f} million | every snapshot, every index file (twice: adopt and plan; a third time for a sweep), every distinct table |")
print(f"| prune: mark reads | {mark_bytes / T:,.1f} TB | distinct tables × table bytes |")
print(f"| prune: memory | {blobs * prune_rss_pb / T:,.1f} TB | blobs × {prune_rss_pb:.0f} B (sets of every needed id, every index entry) |")
print(f"| prune: time in LIST | {t_list / 3600:,.1f} h | pages × {list_lat * 1000:.0f} ms |")
print(f"| prune: time in GET latency | {t_get / 3600:,.1f} h | GETs × {lat * 1000:.0f} ms, one at a time |")
print(f"| prune: transfer | {t_bytes / 3600:,.1f} h | (mark reads + 2 × index/) / bandwidth |")
print(f"| prune: CPU | {t_cpu / 3600:,.1f} h | blobs × {prune_cpu_pb * 1e6:.1f} µs |")
print(f"| prune: total (sum) | {(t_list + t_get + t_bytes + t_cpu) / 3600:,.0f} h | |")
EOF
{
    echo "# cairn on S3 vs local disk"
    echo
    echo "Run $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname): $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r); workdir $WORKDIR ($(df -T "$WORKDIR" | awk 'NR==2 {print $2}')); cairn $(cd "$ROOT" && git rev-parse --short HEAD); s3s-fs $(s3s-fs --version | awk '{print $2}')."
    echo
    echo "- Image: $IMG_BYTES bytes raw (GPT + ext4, $CONTENT_MIB MiB of gen-tree.py content, seed $SEED), $IMG_ALLOC bytes allocated; changed image: $(cat "$WORKDIR/img/mutate.txt")"
    echo "- Page cache not dropped (warm). S3 = s3s-fs on 127.0.0.1, its objects on the same disk as the local repository; requests counted from its debug log (one line per HTTP request)."
    echo
    cat "$OUT.body"
    echo
    if [[ -s $WORKDIR/model.md ]]; then cat "$WORKDIR/model.md"; echo; fi
    echo "## Commands"
    echo
    echo '```sh'
    cat "$CMDS"
    echo '```'
} >"$OUT"
rm -f "$OUT.body"
cat "$OUT"
cleanup
if (( ! KEEP )); then rm -rf -- "$WORKDIR/repo" "$WORKDIR/cache" "$WORKDIR/s3root" "$WORKDIR/data"; fi
phase "done: $OUT"
