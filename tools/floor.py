#!/usr/bin/env python3
"""floor.py -- dedup/compression reference sizes for a series of disk images.

Usage:
    floor.py IMG [IMG...] [--block 4096] [--level 3] [--group-mib 1] [--json]

Treats the images as generations of one disk (the order given is the backup
order) and counts, at --block granularity (4 KiB, the ext4 block size):

  * blocks     non-zero blocks of each image (holes and all-zero blocks are not
               counted; they cost a backup tool nothing but metadata)
  * unique     distinct non-zero blocks over all images so far (by BLAKE2b-128)
  * raw        unique * block size
  * zstd_block the unique blocks each compressed on its own with zstd --level,
               kept raw when that is not smaller -- what an ideal 4 KiB-chunk
               store with per-chunk compression (like cairn's) would hold,
               before per-chunk overhead (encryption nonce+tag, index entry)
  * zstd_group the unique blocks, in order of first appearance, compressed in
               groups of --group-mib: dedup at 4 KiB *and* compression with a
               1 MiB context; smaller than zstd_block, a lower bound no
               per-chunk store reaches with small chunks

Only allocated extents are read (SEEK_DATA/SEEK_HOLE), 4 KiB aligned.
Needs the `zstandard` module (pip install zstandard).
"""

import argparse
import hashlib
import json
import os
import sys
import time

try:
    import zstandard
except ImportError:
    sys.exit("floor.py: needs the zstandard module: pip install zstandard")

READ = 8 << 20


def extents(fd, size):
    pos = 0
    while pos < size:
        try:
            d = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            return
        h = os.lseek(fd, d, os.SEEK_HOLE)
        yield d, h
        pos = h


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="+")
    ap.add_argument("--block", type=int, default=4096)
    ap.add_argument("--level", type=int, default=3)
    ap.add_argument("--group-mib", type=float, default=1.0)
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    a = ap.parse_args()
    B = a.block
    group_size = int(a.group_mib * (1 << 20))
    zero = bytes(B)
    cctx = zstandard.ZstdCompressor(level=a.level)
    seen = set()
    t0 = time.time()

    st = {"block": B, "level": a.level, "group_bytes": group_size, "images": []}
    unique = 0
    zblock = 0
    zgroup = 0
    group = []
    group_len = 0
    class Counter:              # the one stream's compressed bytes, counted, not kept
        n = 0

        def write(self, b):
            Counter.n += len(b)
            return len(b)
    # its own context: cctx is also used for the per-block and per-group numbers
    sobj = zstandard.ZstdCompressor(level=a.level).stream_writer(Counter(), closefd=False)

    def flush_group():
        nonlocal zgroup, group, group_len
        if group:
            buf = b"".join(group)
            zgroup += min(len(cctx.compress(buf)), len(buf))
            group, group_len = [], 0

    for path in a.images:
        size = os.path.getsize(path)
        fd = os.open(path, os.O_RDONLY)
        blocks = 0
        new = 0
        for d, h in extents(fd, size):
            d -= d % B
            os.lseek(fd, d, os.SEEK_SET)
            pos = d
            while pos < h:
                buf = os.read(fd, min(READ, h - pos + (-(h - pos)) % B))
                if not buf:
                    break
                mv = memoryview(buf)
                for i in range(0, len(buf), B):
                    blk = mv[i:i + B]
                    if blk == zero or len(blk) == 0:
                        continue
                    blocks += 1
                    k = hashlib.blake2b(blk, digest_size=16).digest()
                    if k in seen:
                        continue
                    seen.add(k)
                    new += 1
                    b = bytes(blk)
                    zblock += min(len(cctx.compress(b)), len(b))
                    group.append(b)
                    sobj.write(b)
                    group_len += len(b)
                    if group_len >= group_size:
                        flush_group()
                pos += len(buf)
        os.close(fd)
        unique += new
        sobj.flush(zstandard.FLUSH_BLOCK)
        zstream = Counter.n
        st["images"].append({"path": path, "nonzero_blocks": blocks, "new_unique_blocks": new,
                             "cum_unique_blocks": unique, "cum_zstd_block_bytes": zblock,
                             "cum_zstd_stream_bytes": zstream})
        print(f"[floor] {os.path.basename(path)}: {blocks} non-zero blocks, {new} new unique "
              f"({time.time() - t0:.1f}s)", file=sys.stderr, flush=True)
    flush_group()
    sobj.flush(zstandard.FLUSH_FRAME)
    zstream = Counter.n
    st.update({"unique_blocks": unique, "raw_bytes": unique * B,
               "zstd_block_bytes": zblock, "zstd_group_bytes": zgroup,
               "zstd_stream_bytes": zstream})
    if a.json:
        print(json.dumps(st))
    else:
        M = 1 << 20
        print(f"unique non-zero {B}-byte blocks: {unique} ({unique * B / M:.1f} MiB raw)")
        print(f"zstd -{a.level} per block:          {zblock / M:.1f} MiB")
        print(f"zstd -{a.level} per {a.group_mib:g} MiB group:    {zgroup / M:.1f} MiB")
        print(f"zstd -{a.level} one stream:        {zstream / M:.1f} MiB")


if __name__ == "__main__":
    main()
