#!/usr/bin/env bash
# mkimage.sh OUT.img SIZE SRC_DIR
#
# Makes a sparse raw disk image of SIZE (e.g. 2G, 4096M; anything `truncate -s`
# accepts) with a GPT partition table holding one Linux partition from 1 MiB to
# the end of the disk, and an ext4 filesystem in that partition populated from
# SRC_DIR (`mkfs.ext4 -d`).  No root, loop device or mount is needed: mke2fs
# writes the filesystem straight into the image file at a byte offset
# (`-E offset=1048576`).
#
# Layout is repeatable: fixed disk/partition GUIDs, fixed filesystem UUID and
# hash seed, fixed mkfs time (E2FSPROGS_FAKE_TIME).  Two images of the same
# SRC_DIR are still not byte-identical: mke2fs -d copies each inode's ctime
# (and atime) from the source files, and ctime cannot be set.
# Override with MKIMAGE_FS_UUID / MKIMAGE_DISK_GUID / MKIMAGE_PART_GUID.
#
# After writing it checks the result: sparse (allocated < apparent size),
# `sfdisk -d` shows the partition, and `e2fsck -fn` on the partition is clean.
set -euo pipefail

if [[ $# -ne 3 ]]; then
    echo "usage: $0 OUT.img SIZE SRC_DIR" >&2
    exit 2
fi
OUT=$1
SIZE=$2
SRC=$3

[[ -d $SRC ]] || { echo "mkimage: $SRC is not a directory" >&2; exit 2; }
for t in sfdisk mkfs.ext4 e2fsck truncate; do
    command -v "$t" >/dev/null || { echo "mkimage: $t not found" >&2; exit 2; }
done

OFFSET=$((1024 * 1024))             # partition start: 1 MiB = sector 2048
DISK_GUID=${MKIMAGE_DISK_GUID:-5ca1ab1e-0000-4000-8000-00000000c41f}
PART_GUID=${MKIMAGE_PART_GUID:-5ca1ab1e-0000-4000-8000-000000000001}
FS_UUID=${MKIMAGE_FS_UUID:-c41f0000-0000-4000-8000-000000000001}
HASH_SEED=${MKIMAGE_HASH_SEED:-c41f0000-0000-4000-8000-000000000002}
export E2FSPROGS_FAKE_TIME=${E2FSPROGS_FAKE_TIME:-946684800}   # 2000-01-01

echo "[mkimage] creating sparse $OUT ($SIZE)"
rm -f -- "$OUT"
truncate -s "$SIZE" -- "$OUT"
BYTES=$(stat -c %s -- "$OUT")
if (( BYTES < 8 * 1024 * 1024 )); then
    echo "mkimage: SIZE $SIZE is too small" >&2
    exit 2
fi

echo "[mkimage] GPT: one Linux partition from 1 MiB to the end"
sfdisk --quiet --no-reread --no-tell-kernel -- "$OUT" <<EOF
label: gpt
label-id: $DISK_GUID
first-lba: 2048
start=2048, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=$PART_GUID, name="root"
EOF

# Partition size in sectors, as sfdisk laid it out (the GPT backup header at
# the end of the disk is excluded).
read -r PSTART PSIZE < <(sfdisk -d -- "$OUT" |
    sed -n 's/.*start= *\([0-9]*\), *size= *\([0-9]*\).*/\1 \2/p' | head -n1)
[[ $PSTART == 2048 ]] || { echo "mkimage: unexpected partition start $PSTART" >&2; exit 1; }
FS_KIB=$((PSIZE / 2))
FS_KIB=$((FS_KIB - FS_KIB % 4))     # whole 4 KiB blocks

echo "[mkimage] mkfs.ext4 -d $SRC into the partition (offset $OFFSET, ${FS_KIB} KiB)"
# nodiscard: discard on a regular file punches holes and would hit the GPT too.
# lazy_*_init: leave inode tables and journal unwritten (holes), as mke2fs
# does on thin devices; keeps the image sparse.
mkfs.ext4 -q -F -t ext4 -b 4096 -L cairn-root -U "$FS_UUID" \
    -E "offset=$OFFSET,nodiscard,lazy_itable_init=1,lazy_journal_init=1,hash_seed=$HASH_SEED" \
    -d "$SRC" -- "$OUT" "${FS_KIB}k"

# mke2fs must not have grown the file past the disk (would destroy the GPT backup)
NEWBYTES=$(stat -c %s -- "$OUT")
if [[ $NEWBYTES != "$BYTES" ]]; then
    echo "mkimage: image size changed $BYTES -> $NEWBYTES" >&2
    exit 1
fi

echo "[mkimage] checking"
sfdisk -d -- "$OUT" | sed 's/^/    /'
e2fsck -fn "$OUT?offset=$OFFSET" >/dev/null 2>&1 || {
    echo "mkimage: e2fsck -fn failed:" >&2
    e2fsck -fn "$OUT?offset=$OFFSET" >&2 || true
    exit 1
}
ALLOC=$(( $(stat -c %b -- "$OUT") * $(stat -c %B -- "$OUT") ))
if (( ALLOC >= BYTES )); then
    echo "mkimage: image is not sparse (allocated $ALLOC >= $BYTES)" >&2
    exit 1
fi
echo "[mkimage] ok: $OUT apparent $BYTES bytes, allocated $ALLOC bytes" \
    "($(( ALLOC * 100 / BYTES ))%), e2fsck clean"
