#!/usr/bin/env bash
# s3-suite.sh -- end-to-end suite of the real cairn binary against any S3 endpoint.
#
#   AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… tools/s3-suite.sh [URL] [--exact]
#        [--workdir /tmp/cairn-s3-suite] [--out suite-results.md] [--content-mib 150]
#        [-o KEY=VALUE]… [--cairn-bin PATH] [--keep-objects]
#
# URL is a repository URL, s3:http://HOST:PORT/BUCKET[/PREFIX] (default $CAIRN_REPOSITORY);
# the bucket must exist. The suite works in a fresh prefix under it
# (URL/suite-<time>-<random>), or in URL itself with --exact (it must be empty). -o options
# go to every cairn command (e.g. -o s3.conditional-put=false for stores without
# `If-None-Match: *`). Steps, each printed as PASS/FAIL with its time:
#    init; backup of a raw GPT+ext4 image (mkimage.sh, VM web01) and of a qcow2 made from
#    it with qemu-img convert (VM db01, must dedup against the raw one); qemu-io changes to
#    both and second backups; snapshots --json (4 snapshots); restore of both (cmp for the
#    raw one, qemu-img compare for the qcow2); ls and dump of a file inside the image
#    (compared with the source tree); check --read-data; forget --keep-last 1 --prune, then
#    prune --grace 0s; check --read-data; restore again; two backups of different VMs on
#    separate caches while prune --grace 0s runs in a loop on a third; check; a wrong password (exit 12); a
#    repository that does not exist (exit 10).
# The script exits non-zero if any step failed. The objects the suite wrote are removed at
# the end (python3 boto3 needed; else they are left and the prefix is printed) unless
# --keep-objects. Needs python3, qemu-img, qemu-io, sfdisk, mkfs.ext4, e2fsck.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

URL=${CAIRN_REPOSITORY:-}
EXACT=0
WORKDIR=/tmp/cairn-s3-suite
OUT=
CONTENT_MIB=150
OPTS=()
CAIRN_BIN=
KEEP_OBJECTS=0
usage() { sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --exact) EXACT=1; shift ;;
        --workdir) WORKDIR=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --content-mib) CONTENT_MIB=$2; shift 2 ;;
        -o|--option) OPTS+=(-o "$2"); shift 2 ;;
        --cairn-bin) CAIRN_BIN=$2; shift 2 ;;
        --keep-objects) KEEP_OBJECTS=1; shift ;;
        -h|--help) usage 0 ;;
        -*) echo "s3-suite: unknown argument $1" >&2; usage 2 ;;
        *) URL=$1; shift ;;
    esac
done
die() { echo "s3-suite: error: $*" >&2; exit 2; }
[[ $URL == s3:* ]] || die "give an S3 repository URL (s3:http://HOST:PORT/BUCKET/PREFIX) or set CAIRN_REPOSITORY"
[[ -n ${AWS_ACCESS_KEY_ID:-} && -n ${AWS_SECRET_ACCESS_KEY:-} ]] || die "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set"
for t in python3 qemu-img qemu-io sfdisk mkfs.ext4 e2fsck cmp sha256sum; do
    command -v "$t" >/dev/null || die "$t not found"
done
CAIRN_BIN=${CAIRN_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/cairn}
[[ -x $CAIRN_BIN ]] || die "cairn binary $CAIRN_BIN not found (cargo build --release)"
case $WORKDIR in /*) ;; *) WORKDIR=$PWD/$WORKDIR ;; esac
WORKDIR=${WORKDIR%/}
[[ $WORKDIR != / && $WORKDIR != "$HOME" && $WORKDIR != "$ROOT" ]] || die "refusing workdir $WORKDIR"
if [[ -e $WORKDIR && -n $(ls -A "$WORKDIR") && ! -e $WORKDIR/.cairn-s3-suite ]]; then
    die "$WORKDIR is not empty and was not made by s3-suite.sh"
fi
rm -rf -- "$WORKDIR"; mkdir -p "$WORKDIR"/{logs,vm/web01,vm/db01,restore,cache}
touch "$WORKDIR/.cairn-s3-suite"
LOGS=$WORKDIR/logs
URL=${URL%/}
if (( ! EXACT )); then URL=$URL/suite-$(date -u +%Y%m%dT%H%M%S)-$(head -c 3 /dev/urandom | od -An -tx1 | tr -d ' \n'); fi
export CAIRN_REPOSITORY=$URL CAIRN_PASSWORD=suite-password CAIRN_CACHE_DIR=$WORKDIR/cache/main
unset CAIRN_PASSWORD_FILE || true
cp -- "$CAIRN_BIN" "$WORKDIR/cairn"; CAIRN=$WORKDIR/cairn

RESULTS=$WORKDIR/results.tsv; : >"$RESULTS"
FAILS=0
T0=$SECONDS
# step NAME CMD...: run CMD (a shell function or command), print PASS/FAIL with its time
step() {
    local name=$1; shift
    local t0 t1 rc
    t0=$(date +%s.%N)
    "$@" >"$LOGS/step.out" 2>&1; rc=$?
    t1=$(date +%s.%N)
    local secs; secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
    local n; n=$(wc -l <"$RESULTS")
    cp "$LOGS/step.out" "$LOGS/$(printf %02d $((n + 1)))-${name//[^A-Za-z0-9._-]/_}.log"
    if (( rc == 0 )); then
        printf 'PASS  %-58s %6ss\n' "$name" "$secs"
        printf 'PASS\t%s\t%s\t\n' "$name" "$secs" >>"$RESULTS"
    else
        FAILS=$((FAILS + 1))
        local why; why=$(grep -v '^\s*$' "$LOGS/step.out" | tail -n 3 | tr '\n\t' '  ' | cut -c1-300)
        printf 'FAIL  %-58s %6ss  %s\n' "$name" "$secs" "$why"
        printf 'FAIL\t%s\t%s\t%s\n' "$name" "$secs" "$why" >>"$RESULTS"
    fi
}
c() { "$CAIRN" "${OPTS[@]}" "$@"; }
jget() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {"j": j}))' "$@"; }
expect_exit() {   # expect_exit CODE CMD...
    local want=$1; shift
    "$@"; local rc=$?
    echo "exit code $rc (want $want)"
    [[ $rc == "$want" ]]
}

echo "cairn suite against $URL ($("$CAIRN" --version))"
echo "options: ${OPTS[*]:-none}; workdir $WORKDIR"

# ------------------------------------------------------------ images (setup, not a step)
TREE=$WORKDIR/tree
RAW=$WORKDIR/vm/web01/disk0.img
QCOW=$WORKDIR/vm/db01/disk1.qcow2
echo "setup: gen-tree.py ${CONTENT_MIB} MiB, mkimage.sh 1G, qemu-img convert -O qcow2"
python3 "$HERE/gen-tree.py" "$TREE" --size-mib "$CONTENT_MIB" --seed suite >"$LOGS/gen-tree.out" 2>&1 || die "gen-tree.py failed"
"$HERE/mkimage.sh" "$RAW" 1G "$TREE" >"$LOGS/mkimage.out" 2>&1 || die "mkimage.sh failed (log $LOGS/mkimage.out)"
qemu-img convert -f raw -O qcow2 "$RAW" "$QCOW" || die "qemu-img convert failed"
# a file inside the image to dump later: the largest under etc/ (text) and one under usr/
INNER=$(cd "$TREE" && find etc usr -type f -size +4k 2>/dev/null | sort | head -n 1)
[[ -n $INNER ]] || INNER=$(cd "$TREE" && find . -type f ! -name '.*' | sed 's|^\./||' | sort | head -n 1)
cp -- "$TREE/$INNER" "$WORKDIR/inner.orig"
rm -rf -- "$TREE"
sha_raw1=$(sha256sum <"$RAW" | cut -d' ' -f1)

# change DISK FMT SEED: qemu-io writes (random extents and 4 KiB patterns) into allocated data
change() {
    local disk=$1 fmt=$2 seed=$3 f=$WORKDIR/extent.bin
    python3 -c 'import random,sys; sys.stdout.buffer.write(random.Random(sys.argv[1]).randbytes(1 << 20))' "$seed" >"$f"
    local cmds=() o
    for i in 0 1 2 3 4 5 6 7; do
        o=$(( (3 + i * 37 + seed * 11) % 120 * 1048576 + 4 * 1048576 ))
        cmds+=(-c "write -q -s $f $o 1048576" -c "write -q -P 0x$(printf %02x $(( (seed * 16 + i) % 255 + 1 ))) $((o + 65536 * 20)) 4096")
    done
    qemu-io -f "$fmt" "${cmds[@]}" "$disk"
    rm -f "$f"
}

s_init() { c init; }
s_backup() {   # s_backup VM JSONOUT DISK [cache]
    local vm=$1 out=$2 disk=$3
    c backup --json --vm "$vm" "$disk" >"$out" && jget "$out" 'j["snapshot"]'
}
s_qcow_dedup() {
    python3 - "$WORKDIR/b-web01-1.json" "$WORKDIR/b-db01-1.json" <<'EOF'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
print(f"raw stored {a['bytes_stored']} bytes, then the qcow2 of the same guest content {b['bytes_new']} new bytes")
sys.exit(0 if b["bytes_new"] < a["bytes_new"] / 20 else 1)
EOF
}
s_snapshots() {
    c snapshots --json >"$WORKDIR/snaps.json" &&
        python3 - "$WORKDIR/snaps.json" "$1" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(len(s), "snapshots:", ", ".join(f"{x['id'][:8]} {x.get('vm')}" for x in s))
sys.exit(0 if len(s) == int(sys.argv[2]) else 1)
EOF
}
s_restore_raw() {   # s_restore_raw SNAP WANT_SHA
    local d=$WORKDIR/restore/raw; rm -rf "$d"
    c restore --json "$1" --target "$d" >"$WORKDIR/r.json" || return 1
    local f; f=$(jget "$WORKDIR/r.json" 'j["disks"][0]["path"]')
    local got; got=$(sha256sum <"$f" | cut -d' ' -f1)
    echo "restored $f: sha256 $got, want $2"
    [[ $got == "$2" ]] && cmp "$f" "$RAW_COPY" && rm -rf "$d"
}
s_restore_qcow() {
    local d=$WORKDIR/restore/qcow; rm -rf "$d"
    c restore --json "$1" --target "$d" >"$WORKDIR/r.json" || return 1
    local f; f=$(jget "$WORKDIR/r.json" 'j["disks"][0]["path"]')
    echo "restored $f ($(qemu-img info "$f" | awk '/file format/ {print $3}'))"
    qemu-img compare "$f" "$QCOW_COPY" && rm -rf "$d"
}
s_ls_dump() {
    local snap=$1 p
    c ls "$snap" || return 1
    p=$(c ls "$snap" | awk '/p1/ {for (i = 1; i <= NF; i++) if ($i ~ /^\/.*p1/) print $i}' | head -n 1)
    [[ -n $p ]] || p=/disk0.img/p1
    echo "volume $p; dumping $p/$INNER"
    c ls -l "$snap" "$p/$(dirname "$INNER")" | sed -n 1,5p || return 1
    c dump "$snap" "$p/$INNER" >"$WORKDIR/inner.dump" || return 1
    cmp "$WORKDIR/inner.dump" "$WORKDIR/inner.orig" && echo "dump equals the source file ($(stat -c %s "$WORKDIR/inner.orig") bytes)"
}
s_check() { c check --json --read-data >"$WORKDIR/check.json"; local rc=$?; jget "$WORKDIR/check.json" '"%d snapshots, %d packs, %d blobs, problems: %s" % (j["snapshots"], j["packs"], j["blobs"], j["problems"])'; [[ $rc == 0 ]] && jget "$WORKDIR/check.json" 'j["problems"]' | grep -qx '\[\]'; }
s_concurrent() {
    change "$RAW" raw 5; change "$QCOW" qcow2 6
    cp --sparse=always "$RAW" "$RAW_COPY"; cp "$QCOW" "$QCOW_COPY"
    CAIRN_CACHE_DIR=$WORKDIR/cache/proxy1 c backup --json --vm web01 "$RAW" >"$WORKDIR/cb1.json" 2>"$LOGS/cb1.err" & local p1=$!
    CAIRN_CACHE_DIR=$WORKDIR/cache/proxy2 c backup --json --vm db01 "$QCOW" >"$WORKDIR/cb2.json" 2>"$LOGS/cb2.err" & local p2=$!
    # prune --grace 0s over and over (a third cache) until both backups are done
    local r3=0 n=0
    : >"$LOGS/cprune.out"
    while kill -0 $p1 2>/dev/null || kill -0 $p2 2>/dev/null || (( n == 0 )); do
        CAIRN_CACHE_DIR=$WORKDIR/cache/proxy3 c prune --grace 0s >>"$LOGS/cprune.out" 2>&1 || { r3=$?; break; }
        n=$((n + 1))
    done
    local r1=0 r2=0
    wait $p1 || r1=$?; wait $p2 || r2=$?
    echo "backup web01 exit $r1, backup db01 exit $r2; $n prune runs beside them, last exit $r3"
    cat "$LOGS/cb1.err" "$LOGS/cb2.err" | tail -n 4; tail -n 2 "$LOGS/cprune.out"
    (( r1 == 0 && r2 == 0 && r3 == 0 ))
}
s_missing() {
    CAIRN_REPOSITORY=${URL}-missing-$RANDOM expect_exit 10 c snapshots
}

RAW_COPY=$WORKDIR/raw.copy; QCOW_COPY=$WORKDIR/qcow.copy
step "init" s_init
step "backup raw ext4 image (web01)" s_backup web01 "$WORKDIR/b-web01-1.json" "$RAW"
SNAP_WEB1=$(jget "$WORKDIR/b-web01-1.json" 'j["snapshot"]' 2>/dev/null)
step "backup qcow2 (db01)" s_backup db01 "$WORKDIR/b-db01-1.json" "$QCOW"
step "qcow2 of the same guest dedups against the raw image" s_qcow_dedup
change "$RAW" raw 1 >/dev/null; change "$QCOW" qcow2 2 >/dev/null
cp --sparse=always "$RAW" "$RAW_COPY"; cp "$QCOW" "$QCOW_COPY"
sha_raw2=$(sha256sum <"$RAW" | cut -d' ' -f1)
step "second backup after qemu-io changes (web01)" s_backup web01 "$WORKDIR/b-web01-2.json" "$RAW"
step "second backup after qemu-io changes (db01)" s_backup db01 "$WORKDIR/b-db01-2.json" "$QCOW"
step "snapshots --json (4)" s_snapshots 4
step "restore web01:latest, sha256 + cmp" s_restore_raw web01:latest "$sha_raw2"
step "restore db01:latest, qemu-img compare with the qcow2" s_restore_qcow db01:latest
step "ls + dump a file inside the first snapshot's ext4" s_ls_dump "$SNAP_WEB1"
step "check --read-data" s_check
step "forget --keep-last 1 --prune" c forget --keep-last 1 --prune
step "prune --grace 0s" c prune --grace 0s
step "snapshots --json (2 left)" s_snapshots 2
step "check --read-data after prune" s_check
step "restore web01:latest again after prune" s_restore_raw web01:latest "$sha_raw2"
step "restore db01:latest again after prune" s_restore_qcow db01:latest
step "2 backups (2 caches) beside a prune --grace 0s loop" s_concurrent
step "check --read-data after the concurrent run" s_check
step "restore web01:latest after the concurrent run" s_restore_raw web01:latest "$(sha256sum <"$RAW_COPY" | cut -d' ' -f1)"
step "restore db01:latest after the concurrent run" s_restore_qcow db01:latest
step "wrong password: exit 12" expect_exit 12 env CAIRN_PASSWORD=wrong-password "$CAIRN" "${OPTS[@]}" snapshots
step "missing repository: exit 10" s_missing

TOTAL=$((SECONDS - T0))
NPASS=$(grep -c '^PASS' "$RESULTS"); NFAIL=$(grep -c '^FAIL' "$RESULTS")
echo
echo "$NPASS passed, $NFAIL failed, ${TOTAL}s; logs in $LOGS"

if [[ -n $OUT ]]; then
    {
        echo "| result | step | seconds | detail |"
        echo "|---|---|---:|---|"
        awk -F'\t' '{gsub(/\|/, "\\|", $4); printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4}' "$RESULTS"
        echo
        echo "$NPASS passed, $NFAIL failed, ${TOTAL} s in all (setup included). Repository $URL, options: ${OPTS[*]:-none}, $("$CAIRN" --version)."
    } >"$OUT"
fi

if (( ! KEEP_OBJECTS )); then
    if python3 -c 'import boto3' 2>/dev/null; then
        python3 - "$URL" <<'EOF' || echo "s3-suite: could not remove the suite's objects under $URL"
import os, sys, urllib.parse, boto3
from botocore.config import Config
u = sys.argv[1][3:]
p = urllib.parse.urlparse(u)
bucket, _, prefix = p.path.lstrip("/").partition("/")
s3 = boto3.client("s3", endpoint_url=f"{p.scheme}://{p.netloc}", region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                  config=Config(s3={"addressing_style": "path"}))
n = 0
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
    keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
    for i in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[i:i + 1000]}); n += len(keys[i:i + 1000])
print(f"removed {n} objects under {sys.argv[1]}")
EOF
    else
        echo "s3-suite: boto3 not available: the suite's objects are left under $URL"
    fi
fi
rm -rf -- "$WORKDIR/vm" "$WORKDIR/restore" "$WORKDIR/raw.copy" "$WORKDIR/qcow.copy"
(( NFAIL == 0 ))
