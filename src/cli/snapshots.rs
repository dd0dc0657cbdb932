use super::{human, Cli};
use crate::snapshot;
use crate::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this VM's snapshots.
    #[arg(long)]
    vm: Option<String>,
}

#[derive(serde::Serialize)]
struct Row {
    id: String,
    short_id: String,
    vm: String,
    time: String,
    host: String,
    tags: Vec<String>,
    parent: Option<String>,
    protected: bool,
    disks: Vec<DiskRow>,
    /// The VM's config files stored with the disks.
    files: Vec<String>,
    logical_size: u64,
}

#[derive(serde::Serialize)]
struct DiskRow {
    name: String,
    format: String,
    size: u64,
}

pub fn run(cli: &Cli, a: &Args) -> Result<i32> {
    let repo = cli.open()?;
    let protected = crate::forget::protected_ids(&repo)?;
    let loaded = snapshot::load_all(&repo)?;
    if let Some(w) = loaded.warning() {
        eprintln!("cairn: warning: {w}");
    }
    let rows: Vec<Row> = loaded
        .snapshots
        .into_iter()
        .filter(|(_, s)| a.vm.as_ref().is_none_or(|v| &s.vm == v))
        .map(|(id, s)| Row {
            protected: protected.contains(&id),
            id: id.to_hex(),
            short_id: id.short(),
            logical_size: s.logical_size(),
            vm: s.vm,
            time: s.time,
            host: s.host,
            tags: s.tags,
            parent: s.parent.map(|p| p.to_hex()),
            disks: s
                .disks
                .into_iter()
                .map(|d| DiskRow {
                    name: d.name.to_string(),
                    format: d.format,
                    size: d.size,
                })
                .collect(),
            files: s.files.into_iter().map(|f| f.name.to_string()).collect(),
        })
        .collect();
    if cli.json {
        cli.print_json(&rows);
        return Ok(0);
    }
    println!(
        "{:<9} {:<12}  {:<29}  {:<12}  {:<12}  {:>5}  {:>10}",
        "ID", "VM", "TIME", "HOST", "TAGS", "DISKS", "SIZE"
    );
    for r in &rows {
        println!(
            "{:<9} {:<12}  {:<29}  {:<12}  {:<12}  {:>5}  {:>10}",
            format!("{}{}", r.short_id, if r.protected { "*" } else { "" }),
            r.vm,
            r.time,
            r.host,
            r.tags.join(","),
            r.disks.len(),
            human(r.logical_size)
        );
    }
    println!("{} (* protected)", super::plural(rows.len(), "snapshot"));
    Ok(0)
}
