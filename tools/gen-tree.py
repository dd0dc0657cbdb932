#!/usr/bin/env python3
"""Deterministic generator of VM-like filesystem content for cairn test images.

Usage:
    gen-tree.py DIR --size-mib N --seed S [--generation G]

Generation 0 (the default) is the base tree, about N MiB:
  * ~65%  real files copied from /usr/lib, /usr/share, /usr/bin (ELF binaries,
          shared libraries, text, .gz, ...), each source file used at most once,
          kept at its own relative path (usr/lib/..., usr/share/..., usr/bin/...).
          If the sources run out, "vendor blobs" are synthesised from a pool of
          real bytes, perturbed every 4 KiB so they do not dedup against each
          other or against the originals.
  * ~15%  generated text: syslog-style logs (var/log), documents (home/*/docs),
          config files (etc/).
  * ~20%  random (incompressible) data files (var/lib/*, home/*/media).

--generation G (G >= 1) derives generation G from generation G-1: about 2% of
the bytes change (appends to logs and other files, overwrites in the middle of
files, a few deletions, a few new files).  If DIR already holds generation G-1
of the same seed (recorded in DIR/.gen-tree.json) only that step is applied, in
place; if DIR is empty or missing, generation 0 is built and steps 1..G are
applied.

Same seed (and same --size-mib) => same tree, byte for byte, on machines with
the same /usr content (the real files are read from this machine's /usr).
File and directory mtimes are set to fixed, seed-derived values as well.
"""

import argparse
import json
import math
import os
import random
import stat
import sys
import time
import zlib

KiB = 1 << 10
MiB = 1 << 20
STATE = ".gen-tree.json"
SOURCES = ["/usr/lib", "/usr/share", "/usr/bin"]
MAX_REAL_FILE = 32 * MiB
BASE_MTIME = 946684800  # 2000-01-01T00:00:00Z (deterministic fake times)
CHANGE_FRACTION = 0.02

SHARE_RANDOM = 0.20
SHARE_LOGS = 0.09
SHARE_DOCS = 0.05
SHARE_CONF = 0.01
# the rest (~65%) is real files

PROCS = ["systemd", "kernel", "sshd", "cron", "nginx", "postgres", "dockerd",
         "containerd", "NetworkManager", "dhclient", "rsyslogd", "snapd",
         "apt", "unattended-upgrade", "chronyd", "auditd", "polkitd", "sudo"]
HOSTS = ["web01", "db01", "app02", "build03", "cache01"]
MSGS = [
    "Started Session %d of user root (seat%d).",
    "Accepted publickey for deploy from 10.0.%d.%d port 52144 ssh2",
    "pam_unix(sshd:session): session opened for user deploy(uid=%d) by (uid=%d)",
    "GET /api/v1/items/%d HTTP/1.1 200 %d",
    "POST /api/v1/orders HTTP/1.1 201 %d latency=%dms",
    "checkpoint complete: wrote %d buffers (%d.0%%)",
    "automatic vacuum of table \"app.public.events\": index scans: %d, pages removed %d",
    "eth0: Link is Up - 10Gbps/Full - flow control off (%d/%d)",
    "EXT4-fs (vda1): re-mounted. Opts: errors=remount-ro. Quota mode: none. %d %d",
    "CRON[%d]: (root) CMD (command -v debian-sa1 > /dev/null && debian-sa1 1 %d)",
    "Reloading requested from client PID %d ('systemctl') (unit session-%d.scope)...",
    "container %d exited with code %d",
    "audit: type=1400 audit(%d.123:%d): apparmor=\"ALLOWED\" operation=\"open\"",
    "Selected source 192.168.%d.%d (2.debian.pool.ntp.org)",
    "DHCPREQUEST for 10.1.%d.%d on eth0 to 10.1.0.1 port 67",
    "worker %d finished job queue=default attempts=%d",
    "cache miss key=user:%d:profile ttl=%d",
    "Out of memory: Killed process %d (java) total-vm:%dkB",
    "usb 1-1: new high-speed USB device number %d using xhci_hcd (%d)",
    "Removed slice user-%d.slice - User Slice of UID %d.",
]
WORDS = ("the of and to in is that for it as was with be by on not he this are "
         "or his from at which but have an they you were her she there would "
         "their we him been has when who will more no if out so said what up "
         "its about into than them can only other new some could time these two "
         "may then do first any my now such like our over man me even most made "
         "after also did many before must through back years where much your way "
         "well down should because each just those people how too little state "
         "good very make world still own see men work long get here between both "
         "life being under never day same another know while last might us great "
         "old year off come since against go came right used take three backup "
         "disk image snapshot chunk server kernel memory network cluster volume "
         "database replica deploy release storage request latency throughput").split()
CONF_KEYS = ["listen", "port", "max_connections", "timeout", "log_level", "user",
             "group", "worker_processes", "keepalive", "buffer_size", "root",
             "include", "ssl_certificate", "cache_size", "enabled", "threads"]


def log(msg):
    print(f"[gen-tree] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- content ---

def gen_log_bytes(rng, n, t0):
    """Syslog-like lines, ~n bytes.  Returns (bytes, last_time).

    One getrandbits() call per line keeps this at tens of MB/s."""
    host = HOSTS[rng.randrange(len(HOSTS))]
    out = []
    size = 0
    t = t0
    grb = rng.getrandbits
    nm = len(MSGS)
    np_ = len(PROCS)
    day = -1
    dpfx = ""
    while size < n:
        x = grb(64)
        t += (x & 0x7ff) / 1024.0
        x >>= 11
        it = int(t)
        d, s = divmod(it, 86400)
        if d != day:
            day = d
            dpfx = "2024-%02d-%02dT" % (1 + (d // 28) % 12, 1 + d % 28)
        hh, s = divmod(s, 3600)
        mm, ss = divmod(s, 60)
        line = "%s%02d:%02d:%02d.%06d+00:00 %s %s[%d]: %s\n" % (
            dpfx, hh, mm, ss, int((t - it) * 1e6), host, PROCS[(x & 0xff) % np_],
            (x >> 8) & 0xffff, MSGS[((x >> 24) & 0xff) % nm] % ((x >> 32) & 0x1ffff,
                                                               (x >> 49) & 0x3ff))
        out.append(line)
        size += len(line)
    return "".join(out).encode()[:n], t


def _words(rng, k):
    nw = len(WORDS)
    return [WORDS[b % nw] for b in rng.randbytes(k)]


def gen_doc_bytes(rng, n):
    out = []
    size = 0
    while size < n:
        ws = _words(rng, 4096)
        lens = rng.randbytes(64)
        i = 0
        for L in lens:
            k = 40 + L % 160
            if i + k > len(ws):
                break
            para = " ".join(ws[i:i + k]).capitalize() + ".\n\n"
            i += k
            out.append(para)
            size += len(para)
            if size >= n:
                break
    return "".join(out).encode()[:n]


def gen_conf_bytes(rng, n):
    out = ["# generated configuration\n"]
    size = len(out[0])
    nk = len(CONF_KEYS)
    nw = len(WORDS)
    while size < n:
        x = rng.getrandbits(64)
        r = x & 0xff
        x >>= 8
        if r < 25:
            line = "\n[section_%d]\n" % (x & 0x3ff)
        elif r < 60:
            line = "# " + " ".join(_words(rng, 4 + (x & 7))) + "\n"
        else:
            v = x >> 12
            line = "%s = %s\n" % (CONF_KEYS[(x & 0xff) % nk],
                                   (str(v & 0xffff), "on", "off",
                                    "/var/lib/" + WORDS[(v >> 16) % nw])[(x >> 8) & 3])
        out.append(line)
        size += len(line)
    return "".join(out).encode()[:n]


def log_uniform(rng, lo, hi):
    """Integer in [lo, hi], log-uniformly distributed."""
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def write_file(path, data, mode=0o644):
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def copy_real(src, dst, mode):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while True:
            b = fi.read(4 * MiB)
            if not b:
                break
            fo.write(b)
    os.chmod(dst, mode)


# ------------------------------------------------------------ real files ---

_scan_cache = None


def scan_sources():
    """Sorted list of (abs_path, size) of regular readable files under SOURCES."""
    global _scan_cache
    if _scan_cache is not None:
        return _scan_cache
    out = []
    for root in SOURCES:
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            for fn in sorted(filenames):
                p = os.path.join(dirpath, fn)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                if st.st_size <= 0 or st.st_size > MAX_REAL_FILE:
                    continue
                if not os.access(p, os.R_OK):
                    continue
                out.append((p, st.st_size))
    _scan_cache = out
    return out


def real_mode(src):
    return 0o755 if src.startswith("/usr/bin/") or os.access(src, os.X_OK) else 0o644


# ------------------------------------------------------------ generation 0 ---

def build_base(root, size_mib, seed):
    total = size_mib * MiB
    rng = random.Random(f"cairn-gen-tree/{seed}/base")
    t_start = time.time()
    made = {"real": 0, "blob": 0, "random": 0, "logs": 0, "docs": 0, "conf": 0}
    nfiles = 0

    # --- config files
    budget = int(total * SHARE_CONF)
    i = 0
    while made["conf"] < budget:
        n = min(log_uniform(rng, 200, 64 * KiB), budget - made["conf"])
        name = "etc/%s/%s-%03d.conf" % (rng.choice(["nginx", "app", "postgresql", "systemd",
                                                    "ssh", "default"]), rng.choice(WORDS), i)
        write_file(os.path.join(root, name), gen_conf_bytes(rng, n))
        made["conf"] += n
        nfiles += 1
        i += 1

    # --- logs (a few big ones plus rotated ones)
    budget = int(total * SHARE_LOGS)
    t = 0.0
    i = 0
    while made["logs"] < budget:
        n = min(log_uniform(rng, 16 * KiB, 64 * MiB), budget - made["logs"])
        svc = rng.choice(["syslog", "auth", "kern", "nginx/access", "nginx/error",
                          "postgresql/postgresql-15-main", "app/app", "daemon"])
        name = "var/log/%s.log.%d" % (svc, i) if i >= 8 else "var/log/%s.log" % svc
        if os.path.exists(os.path.join(root, name)):
            name = "var/log/%s.%d.log" % (svc, i)
        data, t = gen_log_bytes(rng, n, t)
        write_file(os.path.join(root, name), data, 0o640)
        made["logs"] += n
        nfiles += 1
        i += 1

    # --- documents
    budget = int(total * SHARE_DOCS)
    i = 0
    while made["docs"] < budget:
        n = min(log_uniform(rng, 1 * KiB, 4 * MiB), budget - made["docs"])
        name = "home/%s/docs/%s-%04d.%s" % (rng.choice(["alice", "bob", "deploy"]),
                                            rng.choice(WORDS), i,
                                            rng.choice(["txt", "md", "csv", "html"]))
        write_file(os.path.join(root, name), gen_doc_bytes(rng, n))
        made["docs"] += n
        nfiles += 1
        i += 1

    # --- random (incompressible) data
    budget = int(total * SHARE_RANDOM)
    i = 0
    while made["random"] < budget:
        n = min(log_uniform(rng, 64 * KiB, 64 * MiB), budget - made["random"])
        name = rng.choice([
            "var/lib/app/blobs/%02x/obj-%05d.bin",
            "home/alice/media/IMG_%05d.jpg",
            "home/bob/archive/backup-%05d.tar.zst",
            "var/lib/postgresql/15/main/base/16384/%05d",
            "srv/uploads/%02x/file-%05d.dat",
        ])
        name = name % ((i % 256, i) if name.count("%") == 2 else (i,))
        write_file(os.path.join(root, name), rng.randbytes(n))
        made["random"] += n
        nfiles += 1
        i += 1

    # --- real files
    budget = total - sum(made.values())
    files = list(scan_sources())
    rng.shuffle(files)
    pool_src = []
    for src, sz in files:
        if made["real"] >= budget:
            break
        if made["real"] + sz > budget + 256 * KiB:
            continue
        # small files are most of the count but ~5% of the bytes: keep 1 in 5 of
        # them so that the tree has fewer, larger files (much faster to make)
        if sz < 8 * KiB and rng.random() < 0.8:
            continue
        dst = os.path.join(root, src.lstrip("/"))
        try:
            copy_real(src, dst, real_mode(src))
        except OSError:
            continue
        made["real"] += sz
        nfiles += 1
        if sz >= 64 * KiB and len(pool_src) < 256:
            pool_src.append(dst)

    # --- sources exhausted: synthesise blobs from a pool of real bytes
    if made["real"] < budget:
        pool = bytearray()
        for p in pool_src:
            with open(p, "rb") as f:
                pool += f.read(2 * MiB)
            if len(pool) >= 128 * MiB:
                break
        if len(pool) < MiB:
            pool += rng.randbytes(MiB)
        i = 0
        while made["real"] + made["blob"] < budget:
            n = min(log_uniform(rng, 256 * KiB, 32 * MiB), budget - made["real"] - made["blob"])
            buf = bytearray()
            while len(buf) < n:
                off = rng.randrange(len(pool))
                buf += pool[off:off + min(n - len(buf), 4 * MiB)]
            # perturb 8 bytes in every 4 KiB so the blob is unique but keeps the
            # compressibility of the real data
            for b in range(0, n, 4096):
                p = b + rng.randrange(min(4096, n - b))
                buf[p:p + 8] = rng.randbytes(8)
            del buf[n:]
            write_file(os.path.join(root, "opt/vendor/lib/blob-%04d.so" % i), bytes(buf), 0o755)
            made["blob"] += n
            nfiles += 1
            i += 1

    log("generation 0: %d files, %.1f MiB (real %.0f, blob %.0f, random %.0f, logs %.0f, "
        "docs %.0f, conf %.0f MiB) in %.1fs" % (
            nfiles, sum(made.values()) / MiB, made["real"] / MiB, made["blob"] / MiB,
            made["random"] / MiB, made["logs"] / MiB, made["docs"] / MiB, made["conf"] / MiB,
            time.time() - t_start))


# ------------------------------------------------------- generation step ---

def list_tree(root):
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            p = os.path.join(dirpath, fn)
            rel = os.path.relpath(p, root)
            if rel == STATE:
                continue
            out.append((rel, os.lstat(p).st_size))
    out.sort()
    return out


def kind_of(rel):
    if rel.startswith("var/log/"):
        return "log"
    if rel.startswith("etc/"):
        return "conf"
    if rel.startswith("home/") and "/docs/" in rel:
        return "doc"
    return "bin"


def content_for(rng, kind, n):
    if kind == "log":
        return gen_log_bytes(rng, n, rng.uniform(0, 3e7))[0]
    if kind == "doc":
        return gen_doc_bytes(rng, n)
    if kind == "conf":
        return gen_conf_bytes(rng, n)
    return rng.randbytes(n)


def apply_generation(root, seed, g):
    t_start = time.time()
    rng = random.Random(f"cairn-gen-tree/{seed}/gen{g}")
    files = list_tree(root)
    total = sum(s for _, s in files)
    budget = int(total * CHANGE_FRACTION)
    stats = {"deleted": 0, "deleted_bytes": 0, "appended": 0, "appended_bytes": 0,
             "modified": 0, "modified_bytes": 0, "new": 0, "new_bytes": 0}

    # deletions: ~0.3% of the files, at least 1
    ndel = max(1, len(files) * 3 // 1000)
    victims = set(rng.sample(range(len(files)), min(ndel, len(files))))
    for i in sorted(victims):
        rel, sz = files[i]
        os.unlink(os.path.join(root, rel))
        stats["deleted"] += 1
        stats["deleted_bytes"] += sz
    live = [f for i, f in enumerate(files) if i not in victims]

    # appends: 30% of the budget, mostly logs
    logs = [f for f in live if kind_of(f[0]) == "log"]
    others = [f for f in live if kind_of(f[0]) != "log"]
    target = budget * 30 // 100
    done = 0
    while done < target and (logs or others):
        pick = logs if (logs and (rng.random() < 0.8 or not others)) else others
        rel, sz = pick[rng.randrange(len(pick))]
        n = min(log_uniform(rng, 512, 512 * KiB), target - done) or 1
        data = content_for(rng, kind_of(rel), n)
        with open(os.path.join(root, rel), "ab") as f:
            f.write(data)
        stats["appended"] += 1
        stats["appended_bytes"] += n
        done += n

    # overwrites in the middle of files: 40% of the budget
    big = [f for f in live if f[1] >= 8 * KiB]
    target = budget * 40 // 100
    done = 0
    while done < target and big:
        rel, sz = big[rng.randrange(len(big))]
        n = min(log_uniform(rng, 512, 1 * MiB), sz // 4, target - done) or 1
        off = rng.randrange(0, sz - n + 1)
        data = content_for(rng, kind_of(rel), n)
        with open(os.path.join(root, rel), "r+b") as f:
            f.seek(off)
            f.write(data)
        stats["modified"] += 1
        stats["modified_bytes"] += n
        done += n

    # new files: 30% of the budget; a third real files not yet in the tree
    target = budget * 30 // 100
    done = 0
    real_target = target // 3
    srcs = scan_sources()
    tries = 0
    while done < real_target and srcs and tries < 10000:
        tries += 1
        src, sz = srcs[rng.randrange(len(srcs))]
        dst = os.path.join(root, src.lstrip("/"))
        if sz > real_target - done + 64 * KiB or os.path.lexists(dst):
            continue
        try:
            copy_real(src, dst, real_mode(src))
        except OSError:
            continue
        stats["new"] += 1
        stats["new_bytes"] += sz
        done += sz
    i = 0
    while done < target:
        n = min(log_uniform(rng, 4 * KiB, 16 * MiB), target - done)
        kind = rng.choice(["log", "doc", "bin", "bin"])
        if kind == "log":
            rel = "var/log/app/app-gen%d-%03d.log" % (g, i)
        elif kind == "doc":
            rel = "home/alice/docs/note-gen%d-%03d.txt" % (g, i)
        else:
            rel = "var/lib/app/blobs/new/gen%d-obj-%03d.bin" % (g, i)
        write_file(os.path.join(root, rel), content_for(rng, kind, n))
        stats["new"] += 1
        stats["new_bytes"] += n
        done += n
        i += 1

    changed = stats["appended_bytes"] + stats["modified_bytes"] + stats["new_bytes"]
    log("generation %d: %d files (%.1f MiB) before; deleted %d (%.1f MiB), appended %d "
        "(%.1f MiB), modified %d (%.1f MiB), new %d (%.1f MiB); %.2f%% of bytes written, "
        "in %.1fs" % (
            g, len(files), total / MiB, stats["deleted"], stats["deleted_bytes"] / MiB,
            stats["appended"], stats["appended_bytes"] / MiB, stats["modified"],
            stats["modified_bytes"] / MiB, stats["new"], stats["new_bytes"] / MiB,
            100.0 * changed / max(total, 1), time.time() - t_start))


# ------------------------------------------------------------- mtimes ---

def fix_times(root, seed, generation):
    """Deterministic mtimes: files keep theirs unless changed in this generation."""
    state_path = os.path.join(root, STATE)
    base = BASE_MTIME + generation * 86400
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for fn in filenames:
            p = os.path.join(dirpath, fn)
            st = os.lstat(p)
            # files touched by this run have a wall-clock mtime far after BASE_MTIME
            if st.st_mtime > BASE_MTIME + 3650 * 86400 or p == state_path:
                h = hash_name(seed, os.path.relpath(p, root)) % 86400
                os.utime(p, (base + h, base + h), follow_symlinks=False)
        os.utime(dirpath, (base, base))


def hash_name(seed, rel):
    return zlib.crc32(f"{seed}/{rel}".encode())


# --------------------------------------------------------------- main ---

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--size-mib", type=int, required=True)
    ap.add_argument("--seed", type=str, required=True)
    ap.add_argument("--generation", type=int, default=0)
    a = ap.parse_args()
    if a.generation < 0 or a.size_mib <= 0:
        ap.error("--generation must be >= 0 and --size-mib > 0")

    root = a.dir
    state_path = os.path.join(root, STATE)
    start_gen = None
    if not os.path.exists(root) or not os.listdir(root):
        os.makedirs(root, exist_ok=True)
        build_base(root, a.size_mib, a.seed)
        start_gen = 0
        write_state(state_path, a, 0)
        fix_times(root, a.seed, 0)
    else:
        if not os.path.exists(state_path):
            sys.exit(f"gen-tree: {root} is not empty and has no {STATE}; use an empty dir")
        with open(state_path) as f:
            st = json.load(f)
        if st.get("seed") != a.seed or st.get("size_mib") != a.size_mib:
            sys.exit(f"gen-tree: {root} was made with seed={st.get('seed')} "
                     f"size_mib={st.get('size_mib')}; use an empty dir")
        start_gen = st["generation"]
        if start_gen > a.generation:
            sys.exit(f"gen-tree: {root} is already at generation {start_gen} > {a.generation}")
        if start_gen == a.generation:
            log(f"{root} is already at generation {start_gen}; nothing to do")
    for g in range(start_gen + 1, a.generation + 1):
        apply_generation(root, a.seed, g)
        write_state(state_path, a, g)
        fix_times(root, a.seed, g)


def write_state(path, a, g):
    with open(path, "w") as f:
        json.dump({"seed": a.seed, "size_mib": a.size_mib, "generation": g}, f)
        f.write("\n")


if __name__ == "__main__":
    main()
