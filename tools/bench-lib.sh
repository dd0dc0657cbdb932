# Shared by the benchmark scripts in tools/ (sourced, not run). The caller sets BENCH_NAME
# (the prefix of its messages) and, before calling run/logcmd, CMDS (the commands list)
# and LOGS (the log folder); wait_quiet reads QUIET_WAIT.
# shellcheck shell=bash

phase() { echo; echo "=== [$BENCH_NAME $(date +%H:%M:%S)] $* ==="; }
info() { echo "[$BENCH_NAME] $*"; }
die() { echo "$BENCH_NAME: error: $*" >&2; exit 1; }

# logcmd CMD...: append the command line, shell-quoted, to the commands list.
logcmd() { local s; printf -v s '%q ' "$@"; echo "${s% }" >>"$CMDS"; }

# run NAME CMD...: log the command, run it with output to logs/NAME.out/.err; stop on failure.
run() {
    local name=$1; shift
    logcmd "$@"
    if ! "$@" </dev/null >"$LOGS/$name.out" 2>"$LOGS/$name.err"; then
        echo "$BENCH_NAME: command failed: $*" >&2
        tail -n 20 "$LOGS/$name.err" >&2 || true
        exit 1
    fi
}

# Busy CPU ticks of the whole machine (user+nice+system+irq+softirq+steal from
# /proc/stat). Over a step, this minus the step's own user+sys CPU is "other CPU": work
# by other processes during the step (0 on a quiet machine).
HZ=$(getconf CLK_TCK)
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }

# wait_quiet: wait until other processes use < 10% of one core over 3 s (at most
# QUIET_WAIT seconds), so that measurements do not share the cores.
wait_quiet() {
    local t0=$SECONDS b0 b1
    while (( QUIET_WAIT > 0 )); do
        b0=$(busy_ticks); sleep 3; b1=$(busy_ticks)
        (( (b1 - b0) * 100 < 3 * HZ * 10 )) && break
        if (( SECONDS - t0 >= QUIET_WAIT )); then
            info "machine still busy after ${QUIET_WAIT}s; going on (see the other CPU column)"
            break
        fi
    done
    if (( SECONDS - t0 > 4 )); then info "waited $((SECONDS - t0))s for an idle machine"; fi
    return 0
}

# prepare_cairn: sets CAIRN_BIN_ORIG to the binary to measure (CAIRN_BIN if given, else
# target/release/cairn, built first when BUILD=1) and CAIRN_BIN to a copy in WORKDIR, so a
# rebuild during a long run cannot swap the binary between steps.
prepare_cairn() {
    if [[ -z $CAIRN_BIN ]]; then
        CAIRN_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/cairn
        if (( BUILD )); then
            phase "building cairn (cargo build --release)"
            logcmd cargo build --release
            (cd "$ROOT" && cargo build --release) >"$LOGS/build.out" 2>&1 ||
                { tail -n 30 "$LOGS/build.out" >&2; die "cairn build failed (log: $LOGS/build.out)"; }
        fi
    fi
    [[ -x $CAIRN_BIN ]] || die "cairn binary $CAIRN_BIN not found"
    CAIRN_BIN_ORIG=$CAIRN_BIN
    cp -- "$CAIRN_BIN" "$WORKDIR/cairn"
    CAIRN_BIN=$WORKDIR/cairn
    info "cairn binary: $CAIRN_BIN_ORIG (built $(date -u -r "$CAIRN_BIN_ORIG" +%H:%M:%SZ)), run from a copy: $CAIRN_BIN"
}
