#!/usr/bin/env bash
# Installs the tools the tests and the demo drive (Debian/Ubuntu package names): disk image
# and filesystem tools to build real guest disks, ntfs-3g and fuse3 for NTFS images and the
# FUSE mount, lvm2 and cryptsetup for LVM and LUKS volumes.
# Idempotent: does nothing when every tool is present.
set -euo pipefail
declare -A pkg=([sfdisk]=fdisk [mkfs.ext4]=e2fsprogs [e2fsck]=e2fsprogs [debugfs]=e2fsprogs
                [qemu-img]=qemu-utils [qemu-io]=qemu-utils [sha256sum]=coreutils
                [mkfs.xfs]=xfsprogs [mkntfs]=ntfs-3g [ntfs-3g]=ntfs-3g [setfattr]=attr
                [mcopy]=mtools [mkfs.vfat]=dosfstools [pvcreate]=lvm2 [losetup]=mount
                [cryptsetup]=cryptsetup-bin [fusermount3]=fuse3 [tar]=tar)
missing=()
for tool in "${!pkg[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/sbin:/usr/sbin" command -v "$tool" >/dev/null 2>&1 || missing+=("${pkg[$tool]}")
done
# The S3 server the tests start on loopback (a Rust crate, not a Debian package).
if ! command -v s3s-fs >/dev/null 2>&1 && ! [ -x "$HOME/.cargo/bin/s3s-fs" ]; then
  echo "installing s3s-fs (cargo install)" >&2
  cargo install --quiet --locked s3s-fs --version 0.14.1 --features binary
fi
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ]; then
  echo "missing tools; install as root: apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
