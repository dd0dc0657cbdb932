#!/usr/bin/env bash
# ceph-rgw.sh -- a throw-away single-node Ceph cluster with a RADOS Gateway (S3) on
# loopback, for running cairn against a real distributed object store.
#
#   tools/ceph-rgw.sh start [--workdir /tmp/cairn-ceph] [--port 7480] [--bucket cairn]
#                           [--store bluestore|memstore] [--osd-size 24G] [--no-mgr]
#   tools/ceph-rgw.sh env   [--workdir DIR]     print the export lines (URL, keys)
#   tools/ceph-rgw.sh stop  [--workdir DIR]     stop every daemon started from DIR
#   tools/ceph-rgw.sh clean [--workdir DIR]     stop, then remove DIR
#
# What `start` does, all as the current user, all state under the work folder:
#   - ceph.conf with cephx off, pool size 1, run/log/admin sockets under the folder;
#   - one monitor (mon.a on 127.0.0.1:3300/6789, monmaptool + ceph-mon --mkfs);
#   - one manager (mgr.x; skipped with --no-mgr: I/O works without it, `ceph -s`
#     then shows stale PG states);
#   - one OSD: BlueStore on a plain sparse file (bluestore_block_path, no LVM, no
#     ceph-volume, no device-mapper) or MemStore (RAM) with --store memstore;
#   - one radosgw (beast frontend on 127.0.0.1:PORT);
#   - an S3 user (radosgw-admin user create) and a bucket (python boto3, else s3cmd).
# It prints the endpoint, the keys and the bucket, and writes them to DIR/env.sh:
#   source DIR/env.sh   # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, S3_URL, CAIRN_REPOSITORY
# Needs the Debian packages ceph-mon ceph-osd ceph-mgr radosgw (Ceph 16.2 on bookworm).
# Daemons' pids are kept in DIR/run/*.pid; `stop` kills exactly those.
set -euo pipefail

CMD=${1:-}
[[ -n $CMD ]] && shift || true
WORKDIR=/tmp/cairn-ceph
PORT=7480
BUCKET=cairn
STORE=bluestore
OSD_SIZE=24G
MGR=1
usage() { sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --workdir) WORKDIR=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --bucket) BUCKET=$2; shift 2 ;;
        --store) STORE=$2; shift 2 ;;
        --osd-size) OSD_SIZE=$2; shift 2 ;;
        --no-mgr) MGR=0; shift ;;
        -h|--help) usage 0 ;;
        *) echo "ceph-rgw: unknown argument $1" >&2; usage 2 ;;
    esac
done
case $WORKDIR in /*) ;; *) WORKDIR=$PWD/$WORKDIR ;; esac
WORKDIR=${WORKDIR%/}
[[ $WORKDIR != / && $WORKDIR != "$HOME" ]] || { echo "ceph-rgw: refusing workdir $WORKDIR" >&2; exit 2; }
CONF=$WORKDIR/ceph.conf
RUN=$WORKDIR/run
LOG=$WORKDIR/log

info() { echo "[ceph-rgw $(date +%H:%M:%S)] $*"; }
die() { echo "ceph-rgw: error: $*" >&2; exit 1; }
ceph_() { timeout 60 ceph -c "$CONF" "$@"; }

# wait_for SECS DESC CMD...: retry CMD every second until it succeeds
wait_for() {
    local secs=$1 desc=$2; shift 2
    local t0=$SECONDS
    until "$@" >/dev/null 2>&1; do
        (( SECONDS - t0 < secs )) || die "$desc: not ready after ${secs}s (logs: $LOG)"
        sleep 1
    done
}

stop_all() {
    local f pid name
    shopt -s nullglob
    # radosgw first, then OSD, mgr, mon
    for name in rgw osd mgr mon; do
        for f in "$RUN"/$name*.pid; do
            pid=$(cat "$f" 2>/dev/null || true)
            if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
                info "stopping $(basename "$f" .pid) (pid $pid)"
                kill "$pid" 2>/dev/null || true
                for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
                kill -0 "$pid" 2>/dev/null && { info "  still running: SIGKILL"; kill -9 "$pid" 2>/dev/null || true; }
            fi
            rm -f "$f"
        done
    done
    shopt -u nullglob
}

# start_daemon NAME CMD...: run a daemon in the foreground mode (-f) in the background
start_daemon() {
    local name=$1; shift
    "$@" -f </dev/null >"$LOG/$name.stdout" 2>&1 &
    echo $! >"$RUN/$name.pid"
    info "started $name (pid $!)"
}

write_conf() {
    local fsid=$1
    cat >"$CONF" <<EOF
[global]
fsid = $fsid
mon_host = [v2:127.0.0.1:3300,v1:127.0.0.1:6789]
mon_initial_members = a
public_network = 127.0.0.0/8
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
run_dir = $RUN
admin_socket = $RUN/\$name.asok
log_file = $LOG/\$name.log
pid_file = $RUN/\$name.daemonpid
keyring = $WORKDIR/keyring
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_allow_pool_size_one = true
mon_data_avail_warn = 2
mon_warn_on_pool_no_redundancy = false
mon_max_pg_per_osd = 1000
osd_crush_chooseleaf_type = 0
ms_bind_ipv6 = false
[mon]
mon_data = $WORKDIR/mon/\$name
mon_allow_pool_delete = true
[mgr]
mgr_data = $WORKDIR/mgr/\$name
mgr_initial_modules =
[osd]
osd_data = $WORKDIR/osd/\$name
osd_objectstore = $STORE
bluestore_block_path = $WORKDIR/osd/\$name.block
bluestore_block_create = true
bluestore_block_size = $(numfmt --from=iec "$OSD_SIZE")
bluestore_block_db_create = false
bluestore_block_wal_create = false
bluestore_fsck_on_mount = false
memstore_device_bytes = $(numfmt --from=iec "$OSD_SIZE")
osd_max_object_name_len = 256
osd_max_object_namespace_len = 64
[client.rgw.a]
# radosgw asks for "secure" mon connections by default, which cephx-less auth cannot give
ms_mon_client_mode = crc
rgw_data = $WORKDIR/rgw/\$name
rgw_frontends = beast endpoint=127.0.0.1:$PORT
rgw_dns_name = 127.0.0.1
EOF
}

make_bucket() {
    local url=$1 ak=$2 sk=$3
    if python3 -c 'import boto3' 2>/dev/null; then
        python3 - "$url" "$ak" "$sk" "$BUCKET" <<'EOF'
import sys, boto3
from botocore.config import Config
url, ak, sk, b = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id=ak, aws_secret_access_key=sk,
                  region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))
try:
    s3.create_bucket(Bucket=b)
except s3.exceptions.BucketAlreadyOwnedByYou:
    pass
print("buckets:", [x["Name"] for x in s3.list_buckets()["Buckets"]])
EOF
    elif command -v s3cmd >/dev/null; then
        s3cmd --access_key="$ak" --secret_key="$sk" --host="${url#http://}" \
            --host-bucket="${url#http://}" --no-ssl mb "s3://$BUCKET"
    else
        die "no S3 client to create the bucket: pip install boto3, or apt-get install s3cmd"
    fi
}

do_start() {
    for t in ceph-mon ceph-osd radosgw radosgw-admin monmaptool ceph; do
        command -v "$t" >/dev/null || die "$t not found (apt-get install ceph-mon ceph-osd ceph-mgr radosgw)"
    done
    if [[ -e $WORKDIR ]]; then
        [[ -z $(ls -A "$WORKDIR") || -e $WORKDIR/.cairn-ceph ]] ||
            die "$WORKDIR exists and was not made by ceph-rgw.sh"
        stop_all
        rm -rf -- "$WORKDIR"
    fi
    if (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null; then die "port $PORT is in use"; fi
    mkdir -p "$WORKDIR"/{run,log,mon/mon.a,mgr/mgr.x,osd/osd.0,rgw/client.rgw.a}
    touch "$WORKDIR/.cairn-ceph"
    local fsid
    fsid=$(cat /proc/sys/kernel/random/uuid)
    write_conf "$fsid"
    : >"$WORKDIR/keyring"

    info "monitor mon.a"
    monmaptool --create --clobber --fsid "$fsid" \
        --addv a '[v2:127.0.0.1:3300,v1:127.0.0.1:6789]' "$WORKDIR/monmap" >"$LOG/monmaptool.out"
    ceph-mon -c "$CONF" --mkfs -i a --monmap "$WORKDIR/monmap" >"$LOG/mon-mkfs.out" 2>&1 ||
        { cat "$LOG/mon-mkfs.out" >&2; die "ceph-mon --mkfs failed"; }
    start_daemon mon.a ceph-mon -c "$CONF" -i a
    wait_for 60 "monitor" ceph_ mon stat
    ceph_ config set mon auth_allow_insecure_global_id_reclaim false >/dev/null 2>&1 || true

    if (( MGR )) && command -v ceph-mgr >/dev/null; then
        info "manager mgr.x"
        start_daemon mgr.x ceph-mgr -c "$CONF" -i x
    fi

    info "OSD osd.0 ($STORE, ${OSD_SIZE})"
    local uuid
    uuid=$(cat /proc/sys/kernel/random/uuid)
    local id
    id=$(ceph_ osd new "$uuid")
    [[ $id == 0 ]] || die "expected osd id 0, got $id"
    ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$uuid" >"$LOG/osd-mkfs.out" 2>&1 ||
        { tail -n 30 "$LOG/osd-mkfs.out" >&2; die "ceph-osd --mkfs failed (log: $LOG/osd-mkfs.out, $LOG/ceph-osd.0.log)"; }
    start_daemon osd.0 ceph-osd -c "$CONF" -i 0
    wait_for 120 "osd.0 up" sh -c "ceph -c '$CONF' osd dump 2>/dev/null | grep -q '^osd.0 up'"

    info "radosgw on 127.0.0.1:$PORT"
    start_daemon rgw.a radosgw -c "$CONF" -n client.rgw.a
    wait_for 180 "radosgw on port $PORT" bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT"

    info "S3 user and bucket"
    local ak sk
    ak=cairn$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
    sk=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    timeout 120 radosgw-admin -c "$CONF" user create --uid=cairn --display-name="cairn tests" \
        --access-key="$ak" --secret="$sk" >"$LOG/user-create.out" 2>&1 ||
        { cat "$LOG/user-create.out" >&2; die "radosgw-admin user create failed"; }
    local url=http://127.0.0.1:$PORT
    make_bucket "$url" "$ak" "$sk"
    cat >"$WORKDIR/env.sh" <<EOF
export AWS_ACCESS_KEY_ID=$ak
export AWS_SECRET_ACCESS_KEY=$sk
export AWS_DEFAULT_REGION=us-east-1
export S3_URL=$url
export S3_BUCKET=$BUCKET
export CAIRN_REPOSITORY=s3:$url/$BUCKET/cairn
EOF
    info "ready: $(ceph --version)"
    info "endpoint $url, bucket $BUCKET, access key $ak, secret key $sk"
    cat "$WORKDIR/env.sh"
}

case $CMD in
    start) do_start ;;
    env) cat "$WORKDIR/env.sh" ;;
    stop) stop_all ;;
    clean)
        [[ ! -e $WORKDIR || -e $WORKDIR/.cairn-ceph ]] || die "$WORKDIR was not made by ceph-rgw.sh"
        stop_all; rm -rf -- "$WORKDIR"; info "removed $WORKDIR" ;;
    -h|--help|"") usage 0 ;;
    *) echo "ceph-rgw: unknown command $CMD" >&2; usage 2 ;;
esac
