use super::{human, plural, Cli};
use crate::backup::changes::{ChangeOptions, MapSource};
use crate::backup::{self, BackupOptions};
use crate::image::Format;
use crate::vm::SourceOptions;
use crate::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The VM these disks belong to.
    #[arg(long)]
    vm: String,
    /// The host recorded in the snapshot (default: this machine's name).
    #[arg(long)]
    host: Option<String>,
    /// A tag for the snapshot; repeat for more.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// The snapshot's time, RFC 3339 (default: now).
    #[arg(long, value_parser = parse_time)]
    time: Option<String>,
    /// Read every disk even if its file looks unchanged since the last snapshot, and chunk
    /// every byte again instead of checking the parent's cut points (a read that trusts
    /// nothing of the parent).
    #[arg(long)]
    force_read: bool,
    /// The format of the disks (raw, qcow2, vmdk, vhd, vhdx), for all (`--format raw`) or one
    /// (`--format disk0.img=raw`; repeat for more). Without it a disk's format comes from
    /// the .vmx naming it or from its name and content agreeing; raw disks are never probed.
    #[arg(long = "format", value_name = "[DISK=]FORMAT", value_parser = parse_format)]
    formats: Vec<(Option<String>, Format)>,
    /// Follow backing files and extents that lie outside the folder of the image naming
    /// them (refused by default: an image must not make the backup read other files).
    #[arg(long)]
    allow_backing_outside: bool,
    /// Do not write a file catalog (what `find` searches) of the disks' filesystems.
    #[arg(long)]
    no_catalog: bool,
    /// The changes since the parent snapshot, as a JSON list of areas (VMware
    /// QueryChangedDiskAreas, `[{"offset","length"}]`, or `nbdinfo --map --json`), for all
    /// disks or one (`--changed-extents disk0.vmdk=cbt0.json`); only those are read.
    #[arg(long = "changed-extents", value_name = "[DISK=]FILE")]
    changed_extents: Vec<String>,
    /// A persistent dirty bitmap of the qcow2 disks (or one: `--bitmap disk0.qcow2=NAME`),
    /// added after the parent snapshot was taken; only what it marks is read.
    #[arg(long = "bitmap", value_name = "[DISK=]NAME")]
    bitmaps: Vec<String>,
    /// With a change map: read the whole disk anyway, store that, and fail if the map
    /// missed a change.
    #[arg(long)]
    verify_changed: bool,
    /// Share of the bytes read that may be spent storing old chunks again, next to the new
    /// ones, where the snapshot would otherwise read from too many old packs (capping, e.g.
    /// 5%); off by default: on local disks it has not made a restore measurably faster, and
    /// it grew the repository by 2-5 % (BENCHMARKS.md H, K6).
    #[arg(long, default_value = "0", value_parser = super::prune::parse_share)]
    rewrite_budget: f64,
    /// Disk images (raw, qcow2, VMDK, VHD, VHDX, block devices) or VM folders (the disks
    /// the .vmx names, plus the config files; lock files, swap and logs are skipped).
    #[arg(required = true, value_name = "DISK|FOLDER")]
    disks: Vec<PathBuf>,
}

/// `DISK=VALUE` or `VALUE`.
fn per_disk(s: &str) -> (Option<String>, String) {
    match s.split_once('=') {
        Some((d, v)) if !d.is_empty() => (Some(d.to_string()), v.to_string()),
        _ => (None, s.to_string()),
    }
}

fn change_options(a: &Args) -> ChangeOptions {
    let mut maps = Vec::new();
    for e in &a.changed_extents {
        let (d, f) = per_disk(e);
        maps.push((d, MapSource::Extents(f.into())));
    }
    for b in &a.bitmaps {
        let (d, n) = per_disk(b);
        maps.push((d, MapSource::Bitmap(n)));
    }
    ChangeOptions {
        maps,
        verify: a.verify_changed,
    }
}

fn parse_format(s: &str) -> std::result::Result<(Option<String>, Format), String> {
    let (disk, f) = match s.rsplit_once('=') {
        Some((d, f)) => (Some(d.to_string()), f),
        None => (None, s),
    };
    let f = Format::parse(f)
        .ok_or_else(|| format!("{f:?} is not a format: raw, qcow2, vmdk, vhd or vhdx"))?;
    Ok((disk, f))
}

fn parse_time(s: &str) -> std::result::Result<String, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.to_rfc3339())
        .map_err(|e| {
            format!("{s:?} is not an RFC 3339 time such as 2026-11-22T02:00:00+01:00: {e}")
        })
}

pub fn run(cli: &Cli, a: &Args) -> Result<i32> {
    let opts = BackupOptions {
        vm: a.vm.clone(),
        host: a.host.clone().unwrap_or_else(crate::repo::hostname),
        tags: a.tags.clone(),
        time: a.time.clone().unwrap_or_else(backup::now_rfc3339),
        force_read: a.force_read,
        sources: SourceOptions {
            format: a.formats.iter().find(|(d, _)| d.is_none()).map(|(_, f)| *f),
            per_disk: a
                .formats
                .iter()
                .filter_map(|(d, f)| Some((d.clone()?, *f)))
                .collect(),
            allow_backing_outside: a.allow_backing_outside,
        },
        catalog: !a.no_catalog,
        changes: change_options(a),
        rewrite_budget: a.rewrite_budget,
        quiet: cli.quiet,
    };
    let r = backup::run(&|| cli.open(), &a.disks, &opts)?;
    for w in &r.warnings {
        eprintln!("cairn: warning: {w}");
    }
    if !cli.quiet && !cli.json {
        for s in &r.skipped {
            eprintln!("skipped {}: {}", s.path.display(), s.reason);
        }
    }
    if cli.json {
        cli.print_json(&r);
    } else {
        println!(
            "snapshot {} saved (VM {}, {}, {})",
            &r.snapshot[..8],
            r.vm,
            plural(r.disks, "disk"),
            plural(r.files, "config file")
        );
        for it in r.items.iter().filter(|i| i.format_source.is_some()) {
            let mut line = format!("  {}: {}", it.name, it.format);
            if !it.follows.is_empty() {
                let f: Vec<String> = it.follows.iter().map(|p| p.display().to_string()).collect();
                line.push_str(&format!(", reads {}", f.join(", ")));
            }
            if it.unchanged {
                line.push_str(", unchanged");
            }
            if let Some(c) = &it.changed_blocks {
                line.push_str(&format!(
                    ", changed blocks ({}{}): {} changed, {} read, {} not read",
                    c.map,
                    c.id.as_ref().map(|i| format!(" {i}")).unwrap_or_default(),
                    human(c.changed),
                    human(c.bytes_read),
                    human(c.bytes_skipped)
                ));
            }
            println!("{line}");
        }
        if r.disks_unchanged > 0 {
            println!(
                "  {} unchanged since the parent snapshot, not read",
                plural(r.disks_unchanged, "disk")
            );
        }
        if r.bytes_rewritten > 0 {
            println!(
                "  {} of old chunks stored again next to the new ones (the newest snapshot stays contiguous)",
                human(r.bytes_rewritten)
            );
        }
        println!(
            "  {} logical, {} read, {} holes skipped, {} new, {} stored in {} packs, {:.1}s",
            human(r.logical_bytes),
            human(r.bytes_read),
            human(r.holes_skipped),
            human(r.bytes_new),
            human(r.bytes_stored),
            r.packs_written,
            r.duration_secs
        );
    }
    Ok(0)
}
