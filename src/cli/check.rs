use super::Cli;
use crate::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Also read, decrypt and re-hash every blob of every pack.
    #[arg(long)]
    read_data: bool,
}

pub fn run(cli: &Cli, a: &Args) -> Result<i32> {
    let repo = cli.open()?;
    let r = crate::check::run(&repo, a.read_data, cli.quiet)?;
    let code = if r.problems.is_empty() { 0 } else { 1 };
    if cli.json {
        cli.print_json(&r);
        return Ok(code);
    }
    println!(
        "checked {}, {}, {}, {}{}",
        super::plural(r.snapshots, "snapshot"),
        super::plural(r.index_files, "index file"),
        super::plural(r.packs, "pack"),
        super::plural(r.blobs, "blob"),
        if r.read_data {
            ", reading all data"
        } else {
            ""
        }
    );
    if r.unreferenced_packs > 0 {
        println!(
            "note: {} packs are not in any index (left by an interrupted backup; harmless)",
            r.unreferenced_packs
        );
    }
    // How the newest snapshot of each VM reads: what capping keeps low.
    let mut newest: std::collections::BTreeMap<(&str, &str), &crate::check::Fragmentation> =
        Default::default();
    for f in &r.fragmentation {
        let e = newest.entry((f.vm.as_str(), f.disk.as_str())).or_insert(f);
        if f.time > e.time {
            *e = f;
        }
    }
    for f in newest.values() {
        println!(
            "newest of {}: {} reads {} packs ({:.1}/GiB), {:.2}× its data, in {} reads",
            f.vm, f.disk, f.packs, f.packs_per_gib, f.read_per_data, f.reads
        );
    }
    for p in &r.problems {
        eprintln!("problem: {p}");
    }
    if r.problems.is_empty() {
        println!(
            "no problems found{}",
            if r.read_data {
                "; all data read and verified"
            } else {
                ""
            }
        );
    } else {
        eprintln!("{} found", super::plural(r.problems.len(), "problem"));
    }
    Ok(code)
}
