#!/usr/bin/env bash
# The main job, end to end: make a real VM disk image (GPT + ext4), back it up, change it
# the way a guest would, back it up again, restore both restore points and verify them.
# Usage: tools/demo.sh            (keeps its files in $DEMO_DIR, default a new /tmp folder)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/sbin:/usr/sbin"
tools/install-deps.sh
echo "building cairn (release)..."
cargo build --release --quiet
CAIRN="$PWD/target/release/cairn"
W="${DEMO_DIR:-$(mktemp -d /tmp/cairn-demo.XXXXXX)}"
mkdir -p "$W"
export CAIRN_REPOSITORY="$W/repo" CAIRN_PASSWORD="demo password" CAIRN_CACHE_DIR="$W/cache"
IMG="$W/web01-disk0.img"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
size() { du -sh --apparent-size "$1" | cut -f1; }

step "1. a guest file tree: OS files from this machine, logs, application data"
rm -rf "$W/tree" "$W/repo" "$W/restore"
mkdir -p "$W/tree/usr/share" "$W/tree/var/log" "$W/tree/srv"
cp -r /usr/share/doc /usr/share/man "$W/tree/usr/share/" 2>/dev/null || true
cp -r /usr/lib/python3* "$W/tree/usr/" 2>/dev/null || true
for i in $(seq 1 200); do echo "$(date -u +%FT%T) web01 nginx[$i]: GET /index.html 200 $((i * 37))"; done > "$W/tree/var/log/access.log"
head -c 64M /dev/urandom > "$W/tree/srv/database.bin"
echo "   $(du -sh "$W/tree" | cut -f1) in $(find "$W/tree" -type f | wc -l) files"

step "2. a 2 GiB sparse raw disk: GPT partition table (sfdisk) + ext4 filled from the tree (mkfs.ext4 -d)"
rm -f "$IMG"; truncate -s 2G "$IMG"
printf 'label: gpt\nstart=2048, type=L\n' | sfdisk -q "$IMG"
mkfs.ext4 -q -F -E offset=1048576 -d "$W/tree" "$IMG" $(( (2048 - 2) * 1024 ))k
sfdisk -l "$IMG" | sed -n '/^Device/,$p'
echo "   $IMG: $(size "$IMG") logical, $(du -sh "$IMG" | cut -f1) allocated"
SUM1=$(sha256sum "$IMG" | cut -d' ' -f1)

step "3. cairn init (AES-256-GCM, argon2id key)"
"$CAIRN" init

step "4. first backup: everything is new"
"$CAIRN" backup --vm web01 --tag nightly "$IMG"

step "5. the guest works for a day: a new 16 MiB file, a rewritten log, a deleted file (debugfs, no mount)"
head -c 16M /dev/urandom > "$W/upload.bin"
for i in $(seq 1 500); do echo "$(date -u +%FT%T) web01 nginx[$i]: POST /api 201"; done > "$W/access.log"
debugfs -w -R "write $W/upload.bin /srv/upload.bin" "$IMG?offset=1048576" >/dev/null 2>&1
debugfs -w -R "rm /var/log/access.log" "$IMG?offset=1048576" >/dev/null 2>&1
debugfs -w -R "write $W/access.log /var/log/access.log" "$IMG?offset=1048576" >/dev/null 2>&1
SUM2=$(sha256sum "$IMG" | cut -d' ' -f1)
echo "   image changed: $SUM1 -> $SUM2"

step "6. second backup: only the changes are stored (a synthetic full)"
"$CAIRN" backup --vm web01 --tag nightly "$IMG"
echo "   repository: $(du -sh "$W/repo" | cut -f1) for two full restore points of a $(size "$IMG") disk"

step "7. cairn snapshots"
"$CAIRN" snapshots

step "8. restore both restore points and verify them bit for bit"
ok=1
for n in 1 2; do
  ID=$("$CAIRN" snapshots --json | python3 -c "import json,sys; print(json.load(sys.stdin)[$n-1]['id'])")
  "$CAIRN" restore "${ID:0:8}" --target "$W/restore/$n"
  GOT=$(sha256sum "$W/restore/$n/web01-disk0.img" | cut -d' ' -f1)
  WANT=$([ $n = 1 ] && echo "$SUM1" || echo "$SUM2")
  if [ "$GOT" = "$WANT" ]; then echo "   restore point $n: sha256 matches the image as it was"; else echo "   restore point $n: MISMATCH"; ok=0; fi
  e2fsck -fn "$W/restore/$n/web01-disk0.img?offset=1048576" >/dev/null 2>&1 && echo "   restore point $n: e2fsck finds the filesystem clean"
  echo "   restored file: $(du -sh "$W/restore/$n/web01-disk0.img" | cut -f1) allocated of $(size "$W/restore/$n/web01-disk0.img") (holes stay holes)"
done

step "9. one file from inside the image backup, without restoring the disk"
"$CAIRN" ls web01:latest
"$CAIRN" ls -l web01:latest /web01-disk0.img/p1/var/log
"$CAIRN" find --vm web01 --name access.log
FIRST=$("$CAIRN" snapshots --json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['id'][:8])")
"$CAIRN" restore "$FIRST" --path /web01-disk0.img/p1/var/log/access.log --target "$W/restore/file" --stats
if cmp -s "$W/restore/file/access.log" "$W/tree/var/log/access.log"; then
  echo "   access.log of the first night is back, byte for byte, from inside the image"
else
  echo "   access.log: MISMATCH"; ok=0
fi

step "10. cairn check --read-data: every blob decrypted and re-hashed"
"$CAIRN" check --read-data

[ $ok = 1 ] && printf '\ndemo passed; files are in %s\n' "$W" || { echo "demo FAILED"; exit 1; }
