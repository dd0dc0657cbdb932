#!/usr/bin/env bash
# chunk-study.sh -- which chunker / chunk size should cairn default to?
#
#   tools/chunk-study.sh [--size-gib 1] [--content-mib 600] [--seed 1]
#                        [--workdir /tmp/cairn-chunk-study] [--out chunk-study.md]
#                        [--configs fastcdc:16K,fastcdc:32K,...,fixed:1M]
#                        [--scenarios rebuilt,in-place] [--repeat 1] [--no-build]
#                        [--cairn-bin PATH] [--keep] [--quiet-wait 600] [--retries 2]
#
# Two series of three disk-image generations (sparse raw, GPT + ext4):
#   rebuilt   generation g = mkimage.sh of `gen-tree.py --generation g`
#             (g = 0, 1, 2; ~2% of the file bytes change per generation, and
#             the filesystem is made anew, so file placement moves)
#   in-place  generation 0 (the same image as rebuilt/0), then twice ~2% of the
#             allocated data rewritten in place with qemu-io (the write plan of
#             bench.sh: 90% 64 KiB..1 MiB extents of new random or text data,
#             10% 4 KiB pattern writes, 64 per GiB of them scattered uniformly,
#             the rest in 16 hot 2 MiB zones) -- what a running VM does
# For each --configs entry (default: FastCDC avg 16K 32K 64K 128K 256K 1M,
# fixed 4K 64K 1M) and each series: a fresh repository (`cairn init` defaults
# apart from the chunker: aes-256-gcm, zstd 3), the three generations backed up
# in order from the same path (copied over it, page cache warmed with cat),
# each backup timed with GNU time.  Recorded: `du -sb` of the repository after
# the 3 backups, index entries (blobs, from `cairn check --json`), the summed
# wall and CPU time of the 3 backups, and bytes_new/bytes_stored per backup;
# with --repeat N each configuration is run N times (fresh repository each
# time) and the report gives median times.  "other CPU" is the machine's busy
# CPU time (/proc/stat) during the backups minus their own: non-zero means
# another process shared the cores and the wall times are pessimistic: before
# each run the script waits (up to --quiet-wait s) for an idle machine, and a
# run whose other CPU exceeds 0.5 s + 15% of its wall time is redone in a fresh
# repository (up to --retries times).
# The reference sizes per series come from tools/floor.py (unique non-zero
# 4 KiB blocks over the three images, zstd -3 per block and per 1 MiB group).
#
# Output: markdown to --out and stdout; raw rows in WORKDIR/rows.tsv.
# Needs python3 with `zstandard` (pip install zstandard), qemu-io, e2fsprogs,
# sfdisk, GNU time.  The workdir is wiped at start (only if it is empty or was
# made by this script); repositories are deleted after measuring unless --keep.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

SIZE_GIB=1
CONTENT_MIB=600
SEED=1
WORKDIR=/tmp/cairn-chunk-study
OUT=chunk-study.md
CONFIGS=fastcdc:16K,fastcdc:32K,fastcdc:64K,fastcdc:128K,fastcdc:256K,fastcdc:1M,fixed:4K,fixed:64K,fixed:1M
SCENARIOS=rebuilt,in-place
BUILD=1
CAIRN_BIN=
KEEP=0
REPEAT=1
QUIET_WAIT=600
RETRIES=2

usage() { sed -n '2,39p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --size-gib) SIZE_GIB=$2; shift 2 ;;
        --content-mib) CONTENT_MIB=$2; shift 2 ;;
        --seed) SEED=$2; shift 2 ;;
        --workdir) WORKDIR=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --configs) CONFIGS=$2; shift 2 ;;
        --scenarios) SCENARIOS=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --cairn-bin) CAIRN_BIN=$2; BUILD=0; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --repeat) REPEAT=$2; shift 2 ;;
        --quiet-wait) QUIET_WAIT=$2; shift 2 ;;
        --retries) RETRIES=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "chunk-study: unknown argument $1" >&2; usage 2 ;;
    esac
done
[[ $SIZE_GIB =~ ^[0-9]+$ && $SIZE_GIB -ge 1 ]] || { echo "chunk-study: --size-gib must be an integer >= 1" >&2; exit 2; }
[[ $CONTENT_MIB =~ ^[0-9]+$ && $CONTENT_MIB -ge 16 && $CONTENT_MIB -lt $((SIZE_GIB * 1024 * 85 / 100)) ]] ||
    { echo "chunk-study: --content-mib must be >= 16 and < 85% of the image" >&2; exit 2; }
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || { echo "chunk-study: --repeat must be an integer >= 1" >&2; exit 2; }
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
case $WORKDIR in /*) ;; *) WORKDIR=$PWD/$WORKDIR ;; esac
WORKDIR=${WORKDIR%/}

BENCH_NAME=chunk-study
# shellcheck source=tools/bench-lib.sh
source "$HERE/bench-lib.sh"   # phase, info, die, logcmd, run, busy_ticks, wait_quiet

for t in python3 qemu-io sfdisk mkfs.ext4 e2fsck du; do
    command -v "$t" >/dev/null || die "$t not found"
done
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) not found: apt-get install time"
python3 -c 'import zstandard' 2>/dev/null || die "python3 module zstandard missing: pip install zstandard"

# ------------------------------------------------------------ workdir
[[ -n $WORKDIR && $WORKDIR != / && $WORKDIR != "$HOME" && $WORKDIR != "$ROOT" ]] ||
    die "refusing to use $WORKDIR as workdir"
if [[ -e $WORKDIR ]]; then
    if [[ -n $(ls -A "$WORKDIR") && ! -e $WORKDIR/.cairn-chunk-study ]]; then
        die "$WORKDIR is not empty and was not made by chunk-study.sh; remove it or pick another --workdir"
    fi
    phase "wiping workdir $WORKDIR"
    rm -rf -- "$WORKDIR"
fi
mkdir -p "$WORKDIR"/{img,data,repo,cache,logs,tmp}
touch "$WORKDIR/.cairn-chunk-study"
LOGS=$WORKDIR/logs
ROWS=$WORKDIR/rows.tsv
CMDS=$WORKDIR/commands.txt
: >"$CMDS"
printf 'scenario\tchunker\tsize\trep\trepo_bytes\tblobs\tpacks\twall_s\tcpu_s\tother_s\tmax_rss_kib\tgen_wall\tgen_new\tgen_stored\n' >"$ROWS"

export CAIRN_PASSWORD=study
unset CAIRN_PASSWORD_FILE || true

# ------------------------------------------------------------ build cairn
prepare_cairn

# ------------------------------------------------------------ images
has_scenario() { [[ ",$SCENARIOS," == *",$1,"* ]]; }
IMGDIR=$WORKDIR/img
TREE=$WORKDIR/tree
phase "rebuilt series: gen-tree.py ($CONTENT_MIB MiB, seed $SEED) generations 0..2, mkimage.sh ${SIZE_GIB}G each"
for g in 0 1 2; do
    logcmd python3 "$HERE/gen-tree.py" "$TREE" --size-mib "$CONTENT_MIB" --seed "$SEED" --generation "$g"
    python3 "$HERE/gen-tree.py" "$TREE" --size-mib "$CONTENT_MIB" --seed "$SEED" --generation "$g" \
        2>&1 | sed 's/^/    /'
    logcmd "$HERE/mkimage.sh" "$IMGDIR/rebuilt-$g.img" "${SIZE_GIB}G" "$TREE"
    "$HERE/mkimage.sh" "$IMGDIR/rebuilt-$g.img" "${SIZE_GIB}G" "$TREE" >"$LOGS/mkimage-$g.out" 2>&1 ||
        { cat "$LOGS/mkimage-$g.out" >&2; die "mkimage.sh failed"; }
    tail -n1 "$LOGS/mkimage-$g.out" | sed 's/^/    /'
    has_scenario rebuilt || break        # in-place needs generation 0 only
done
rm -rf -- "$TREE"

# plan_writes IMG GEN -> qemu-io commands on stdout, a summary on stderr.
# Same write plan as tools/bench.sh (kept in step with it by hand), with the
# generation in the seed so each step writes elsewhere.
plan_writes() {
    python3 - "$1" "$SEED" "$2" "$WORKDIR/tmp" "$((SIZE_GIB * 64))" <<'EOF'
import math, os, random, sys
img, seed, gen, tmp, scattered = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
rng = random.Random(f"cairn-chunk-study/{seed}/in-place/{gen}")
size = os.path.getsize(img)
fd = os.open(img, os.O_RDONLY)
extents, pos = [], 0
while pos < size:
    try:
        d = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        break
    h = os.lseek(fd, d, os.SEEK_HOLE)
    extents.append((d, h - d))
    pos = h
os.close(fd)
data = sum(l for _, l in extents)
budget = int(data * 0.02)
lo, hi = 1 << 20, size - (1 << 20)
def pick(n, in_data):
    if in_data and extents:
        r = rng.randrange(data)
        for off, l in extents:
            if r < l:
                o = off + r
                break
            r -= l
    else:
        o = rng.randrange(lo, hi)
    o -= o % 4096
    return max(lo, min(o, hi - n))
WORDS = "the disk image backup chunk server kernel request latency user session".split()
cmds, ext_bytes, ext_n = [], 0, 0
while ext_bytes < budget * 90 // 100:
    n = int(math.exp(rng.uniform(math.log(64 << 10), math.log(1 << 20))))
    n -= n % 4096
    o = pick(n, rng.random() < 0.85)
    src = os.path.join(tmp, f"extent-{gen}-{ext_n:04d}.bin")
    if rng.random() < 0.5:
        buf = rng.randbytes(n)
    else:
        lines, L = [], 0
        while L < n:
            s = "%d %s %s\n" % (rng.getrandbits(40), rng.choice(WORDS), rng.choice(WORDS))
            lines.append(s); L += len(s)
        buf = "".join(lines).encode()[:n]
    with open(src, "wb") as f:
        f.write(buf)
    cmds.append(f"write -q -s {src} {o} {n}")
    ext_bytes += n; ext_n += 1
small = max(0, (budget - ext_bytes) // 4096)
scattered = min(scattered, small)
zones = [pick(2 << 20, True) for _ in range(16)]
for i in range(small):
    if i < scattered:
        o = pick(4096, True)
    else:
        z = zones[rng.randrange(len(zones))]
        o = z + rng.randrange(512) * 4096
    cmds.append(f"write -q -P 0x{rng.randrange(1, 256):02x} {o} 4096")
print("\n".join(cmds))
total = ext_bytes + small * 4096
sys.stderr.write(f"{ext_n} extents ({ext_bytes / 2**20:.1f} MiB) + {small} x 4 KiB writes "
                 f"({scattered} scattered) = {total / 2**20:.1f} MiB = "
                 f"{100 * total / max(data, 1):.2f}% of {data / 2**20:.0f} MiB allocated\n")
EOF
}

if has_scenario in-place; then
    phase "in-place series: generation 0 + two rounds of ~2% qemu-io writes"
    cp --sparse=always "$IMGDIR/rebuilt-0.img" "$IMGDIR/in-place-0.img"
    for g in 1 2; do
        prev=$IMGDIR/in-place-$((g - 1)).img
        cur=$IMGDIR/in-place-$g.img
        logcmd cp --sparse=always "$prev" "$cur"
        cp --sparse=always "$prev" "$cur"
        plan_writes "$cur" "$g" >"$WORKDIR/tmp/qemu-io-$g.cmds" 2>"$WORKDIR/tmp/mutate-$g.txt"
        info "generation $g: $(cat "$WORKDIR/tmp/mutate-$g.txt")"
        logcmd qemu-io -f raw "$cur" "<" "$WORKDIR/tmp/qemu-io-$g.cmds"
        qemu-io -f raw "$cur" <"$WORKDIR/tmp/qemu-io-$g.cmds" >"$LOGS/qemu-io-$g.out" 2>&1 ||
            die "qemu-io failed (log: $LOGS/qemu-io-$g.out)"
        if grep -qiE 'error|failed|invalid' "$LOGS/qemu-io-$g.out"; then die "qemu-io reported errors"; fi
        rm -f "$WORKDIR"/tmp/extent-*.bin
    done
fi
if ! has_scenario rebuilt; then
    rm -f "$IMGDIR/rebuilt-0.img"
fi

# ------------------------------------------------------------ floors
for sc in ${SCENARIOS//,/ }; do
    phase "floor for $sc (tools/floor.py)"
    logcmd python3 "$HERE/floor.py" --json "$IMGDIR/$sc-0.img" "$IMGDIR/$sc-1.img" "$IMGDIR/$sc-2.img"
    python3 "$HERE/floor.py" --json "$IMGDIR/$sc-0.img" "$IMGDIR/$sc-1.img" "$IMGDIR/$sc-2.img" \
        >"$WORKDIR/floor-$sc.json" 2>"$LOGS/floor-$sc.err" ||
        { cat "$LOGS/floor-$sc.err" >&2; die "floor.py failed"; }
    sed 's/^/    /' "$LOGS/floor-$sc.err"
done

# ------------------------------------------------------------ backups
DISK=$WORKDIR/data/disk.img
for sc in ${SCENARIOS//,/ }; do
    for cfg in ${CONFIGS//,/ }; do
        kind=${cfg%%:*}
        size=${cfg#*:}
        [[ $kind == fastcdc || $kind == fixed ]] || die "bad config $cfg (want fastcdc:SIZE or fixed:SIZE)"
        for rep in $(seq 1 "$REPEAT"); do
        attempt=1
        while :; do
        wait_quiet
        name=$sc-$kind-$size-r$rep
        phase "$sc, $kind $size (run $rep of $REPEAT)"
        export CAIRN_REPOSITORY=$WORKDIR/repo/$name CAIRN_CACHE_DIR=$WORKDIR/cache/$name
        if (( rep == 1 )); then
            logcmd env CAIRN_REPOSITORY="$CAIRN_REPOSITORY" CAIRN_CACHE_DIR="$CAIRN_CACHE_DIR" \
                cairn init --chunker "$kind" --chunk-size "$size"
        fi
        "$CAIRN_BIN" init --chunker "$kind" --chunk-size "$size" >"$LOGS/$name-init.out" 2>&1 ||
            { cat "$LOGS/$name-init.out" >&2; die "cairn init failed"; }
        rm -f "$DISK"
        walls=() news=() storeds=() wall_sum=0 cpu_sum=0 other_sum=0 rss_max=0
        for g in 0 1 2; do
            cp --sparse=always "$IMGDIR/$sc-$g.img" "$DISK"   # over the same path
            cat "$DISK" >/dev/null
            if [[ $cfg == "${CONFIGS%%,*}" && $sc == "${SCENARIOS%%,*}" && $rep == 1 ]]; then
                logcmd cp --sparse=always "$IMGDIR/$sc-$g.img" "$DISK"
                logcmd cairn backup --vm study --json -q "$DISK"
            fi
            b0=$(busy_ticks)
            /usr/bin/time -f '%e %U %S %M' -o "$LOGS/$name-$g.time" -- \
                "$CAIRN_BIN" backup --vm study --json -q "$DISK" </dev/null \
                >"$LOGS/$name-$g.json" 2>"$LOGS/$name-$g.err" ||
                { cat "$LOGS/$name-$g.err" >&2; die "cairn backup failed ($name, generation $g)"; }
            b1=$(busy_ticks)
            read -r wall user sys rss < <(tail -n1 "$LOGS/$name-$g.time")
            read -r new stored < <(python3 -c '
import json, sys
t = open(sys.argv[1]).read(); j = json.loads(t[t.index("{"):])
print(j["bytes_new"], j["bytes_stored"])' "$LOGS/$name-$g.json")
            other=$(awk -v d=$((b1 - b0)) -v hz="$HZ" -v u="$user" -v s="$sys" \
                'BEGIN{o = d/hz - u - s; printf "%.1f", (o < 0 ? 0 : o)}')
            walls+=("$wall"); news+=("$new"); storeds+=("$stored")
            wall_sum=$(awk -v a="$wall_sum" -v b="$wall" 'BEGIN{printf "%.2f", a+b}')
            cpu_sum=$(awk -v a="$cpu_sum" -v u="$user" -v s="$sys" 'BEGIN{printf "%.2f", a+u+s}')
            other_sum=$(awk -v a="$other_sum" -v b="$other" 'BEGIN{printf "%.1f", a+b}')
            if (( rss > rss_max )); then rss_max=$rss; fi
            info "generation $g: wall ${wall}s, new $((new / 1048576)) MiB, stored $((stored / 1048576)) MiB, other-cpu ${other}s"
        done
        repo_bytes=$(du -sb "$CAIRN_REPOSITORY" | cut -f1)
        "$CAIRN_BIN" check --json >"$LOGS/$name-check.json" 2>"$LOGS/$name-check.err" ||
            { cat "$LOGS/$name-check.err" >&2; die "cairn check failed ($name)"; }
        if [[ $cfg == "${CONFIGS%%,*}" && $sc == "${SCENARIOS%%,*}" && $rep == 1 ]]; then
            echo 'du -sb "$CAIRN_REPOSITORY"' >>"$CMDS"
            logcmd cairn check --json
        fi
        read -r blobs packs < <(python3 -c '
import json, sys
t = open(sys.argv[1]).read(); j = json.loads(t[t.index("{"):])
print(j["blobs"], j["packs"])' "$LOGS/$name-check.json")
        info "repo $((repo_bytes / 1048576)) MiB, $blobs blobs, $packs packs, backups ${wall_sum}s wall, other-cpu ${other_sum}s"
        if (( attempt <= RETRIES )) && awk -v o="$other_sum" -v w="$wall_sum" 'BEGIN{exit !(o > 0.5 + 0.15 * w)}'; then
            info "another process used the CPU meanwhile: redoing this run (attempt $((attempt + 1)))"
            rm -rf -- "$CAIRN_REPOSITORY" "$CAIRN_CACHE_DIR"
            attempt=$((attempt + 1))
            continue
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$kind" "$size" "$rep" \
            "$repo_bytes" "$blobs" "$packs" "$wall_sum" "$cpu_sum" "$other_sum" "$rss_max" \
            "$(IFS=,; echo "${walls[*]}")" "$(IFS=,; echo "${news[*]}")" \
            "$(IFS=,; echo "${storeds[*]}")" >>"$ROWS"
        (( KEEP )) || rm -rf -- "$CAIRN_REPOSITORY" "$CAIRN_CACHE_DIR"
        break
        done
        done
    done
done
rm -f "$DISK"

# ------------------------------------------------------------ report
phase "writing $OUT"
python3 - "$ROWS" "$WORKDIR" "$SCENARIOS" "$SIZE_GIB" "$CONTENT_MIB" "$SEED" "$CMDS" \
    "$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')" "$REPEAT" \
    "$(date -u -r "$CAIRN_BIN_ORIG" +%Y-%m-%dT%H:%M:%SZ)" >"$OUT" <<'EOF'
import csv, json, os, statistics, sys, time
rows_p, wd, scenarios, size_gib, content_mib, seed, cmds, rev, repeat, built = sys.argv[1:11]
M = 1 << 20
rows = list(csv.DictReader(open(rows_p), delimiter="\t"))
def mib(b): return "%.1f" % (int(b) / M)
med = statistics.median
out = []
p = out.append
p(f"# cairn chunk-size study: {size_gib} GiB images, {content_mib} MiB of content, seed {seed}")
p("")
p(f"Run {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, repo at {rev}, cairn binary built "
  f"{built}, {os.cpu_count()} cores. Repository: `cairn init` defaults (aes-256-gcm, zstd 3) "
  f"but for the chunker. Three backups per repository, one per generation, same path; "
  f"each configuration run {repeat} time(s) in a fresh repository.")
p("")
p("```sh")
p(open(cmds).read().rstrip())
p("```")
warn = []
for sc in scenarios.split(","):
    fl = json.load(open(os.path.join(wd, f"floor-{sc}.json")))
    imgs = fl["images"]
    G = fl["zstd_group_bytes"]
    p("")
    p(f"## {sc}")
    p("")
    p("Non-zero 4 KiB blocks per generation: " + ", ".join(str(i["nonzero_blocks"]) for i in imgs)
      + "; new unique per generation: " + ", ".join(str(i["new_unique_blocks"]) for i in imgs) + ".")
    p("")
    p("| chunker | size | repo MiB | repo / group floor | index entries | packs | "
      "gen 1+2 stored MiB | backups wall s (g0+g1+g2) | g0 / g1+g2 wall s | CPU s | other CPU s |")
    p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    p(f"| floor: unique 4 KiB blocks, raw | | {mib(fl['raw_bytes'])} | "
      f"{fl['raw_bytes'] / G:.2f} | {fl['unique_blocks']} | | "
      f"{mib(sum(i['new_unique_blocks'] for i in imgs[1:]) * fl['block'])} | | | | |")
    p(f"| floor: zstd -3 per 4 KiB block | | {mib(fl['zstd_block_bytes'])} | "
      f"{fl['zstd_block_bytes'] / G:.2f} | {fl['unique_blocks']} | | "
      f"{mib(fl['zstd_block_bytes'] - imgs[0]['cum_zstd_block_bytes'])} | | | | |")
    p(f"| floor: zstd -3 per 1 MiB group | | {mib(G)} | 1.00 | | | | | | | |")
    seen = []
    for r in rows:
        key = (r["chunker"], r["size"])
        if r["scenario"] != sc or key in seen:
            continue
        seen.append(key)
        rs = [x for x in rows if x["scenario"] == sc and (x["chunker"], x["size"]) == key]
        r1 = rs[0]
        def mtxt(vals, fmt):
            t = fmt(med(vals))
            if len(vals) > 1 and fmt(min(vals)) != fmt(max(vals)):
                t += " (" + fmt(min(vals)) + "-" + fmt(max(vals)) + ")"
            return t
        repo = [int(x["repo_bytes"]) for x in rs]
        blobs = [int(x["blobs"]) for x in rs]
        st = [sum(int(v) for v in x["gen_stored"].split(",")[1:]) for x in rs]
        walls = [float(x["wall_s"]) for x in rs]
        g0 = med([float(x["gen_wall"].split(",")[0]) for x in rs])
        g12 = med([sum(float(v) for v in x["gen_wall"].split(",")[1:]) for x in rs])
        wtxt = f"{med(walls):.1f}" + (" (" + ", ".join(f"{w:.1f}" for w in walls) + ")" if len(rs) > 1 else "")
        p(f"| {r1['chunker']} | {r1['size']} | {mtxt(repo, lambda v: mib(v))} | "
          f"{med(repo) / G:.2f} | {mtxt(blobs, lambda v: '%d' % v)} | {r1['packs']} | "
          f"{mtxt(st, lambda v: mib(v))} | "
          f"{wtxt} | {g0:.1f} / {g12:.1f} | {med(float(x['cpu_s']) for x in rs):.1f} | "
          f"{max(float(x['other_s']) for x in rs):.1f} |")
p("")
p("repo MiB = `du -sb` of the repository after the three backups. index entries = "
  "blobs in `cairn check --json`. Sizes and counts: median over the runs, (min-max) when "
  "they differ -- FastCDC is seeded from the repository key, so each fresh repository cuts "
  "different chunks; fixed chunks do not vary. packs: first run. gen 1+2 stored = bytes_stored (after compression) of the "
  "backups of generations 1 and 2. Times: median over the runs (each run's total in "
  "brackets); CPU = user+sys of the backups; other CPU = the machine's busy CPU time during "
  "the backups minus theirs (work of other processes; the max over the runs). Floor rows: "
  "tools/floor.py over the three images (holes and all-zero blocks excluded; the per-block "
  "row keeps a block raw when zstd does not shrink it, as cairn does).")
for w in warn:
    p("")
    p("WARNING: " + w)
print("\n".join(out))
EOF
cat "$OUT"
phase "done: $OUT (rows: $ROWS)"
