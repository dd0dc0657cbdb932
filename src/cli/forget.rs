use super::Cli;
use crate::forget::{self, ForgetOptions, GroupBy};
use crate::retention::{parse_duration, Policy};
use crate::Result;

/// The keep-* rules, shared by `forget` and `policy set`.
#[derive(clap::Args, Debug, Default)]
pub struct KeepArgs {
    /// Keep the N newest snapshots.
    #[arg(long)]
    keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours that have one.
    #[arg(long)]
    keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the last N days that have one.
    #[arg(long)]
    keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N ISO 8601 weeks that have one.
    #[arg(long)]
    keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the last N months that have one.
    #[arg(long)]
    keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the last N years that have one.
    #[arg(long)]
    keep_yearly: Option<u32>,
    /// Keep everything younger than this, relative to the newest snapshot (e.g. 10d, 2w).
    #[arg(long, value_parser = parse_duration)]
    keep_within: Option<i64>,
    /// Keep snapshots with this tag; repeat for more.
    #[arg(long = "keep-tag")]
    keep_tags: Vec<String>,
}

impl KeepArgs {
    pub fn policy(&self) -> Policy {
        Policy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self.keep_within,
            keep_tags: self.keep_tags.clone(),
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Snapshots to remove (id prefixes), whatever the policies say; damaged ones too.
    #[arg(value_name = "SNAPSHOT", conflicts_with_all = ["policy", "keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "keep_within", "keep_tags", "vm"])]
    ids: Vec<String>,
    #[command(flatten)]
    keep: KeepArgs,
    /// Apply the policies stored in the repository (`cairn policy set`) instead of keep-* options.
    #[arg(long, conflicts_with_all = ["keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "keep_within", "keep_tags"])]
    policy: bool,
    /// Only this VM's snapshots.
    #[arg(long)]
    vm: Option<String>,
    /// How snapshots are grouped before the rules apply: vm, host or vm,host.
    #[arg(long, default_value = "vm", value_parser = GroupBy::parse)]
    group_by: GroupBy,
    /// Show what would be kept and removed, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Run prune afterwards.
    #[arg(long)]
    prune: bool,
    /// With --prune: see `cairn prune --help`.
    #[command(flatten)]
    collect: super::prune::CollectArgs,
}

pub fn run(cli: &Cli, a: &Args) -> Result<i32> {
    let repo = cli.open()?;
    let opts = ForgetOptions {
        ids: a.ids.clone(),
        policy: (!a.policy).then(|| a.keep.policy()),
        vm: a.vm.clone(),
        group_by: a.group_by,
        dry_run: a.dry_run,
    };
    let report = forget::forget(&repo, &opts)?;
    for d in &report.damaged {
        eprintln!(
            "cairn: warning: {} cannot be read and was left alone ({}); remove it with `cairn forget {}`",
            d.name,
            d.error,
            d.id.as_deref().map_or("ID", |i| &i[..8.min(i.len())])
        );
    }
    let pruned = if a.prune {
        let p = a.collect.options(a.dry_run, cli.quiet);
        Some(crate::gc::prune(&repo, &p)?)
    } else {
        None
    };
    if cli.json {
        cli.print_json(&serde_json::json!({ "forget": report, "prune": pruned }));
        return Ok(0);
    }
    let verb = if a.dry_run {
        "to remove (dry run)"
    } else {
        "removed"
    };
    for g in &report.groups {
        let via = g
            .policy
            .as_ref()
            .map(|p| format!(" (policy for {p})"))
            .unwrap_or_default();
        println!(
            "{}{via}: {} kept, {} {verb}",
            g.group,
            g.keep.len(),
            g.remove.len()
        );
        for d in &g.keep {
            println!(
                "  keep    {}  {}  {}",
                d.short_id,
                d.time,
                d.reasons.join(", ")
            );
        }
        for d in &g.remove {
            println!("  remove  {}  {}", d.short_id, d.time);
        }
    }
    println!("{} snapshots kept, {} {verb}", report.kept, report.removed);
    if let Some(p) = pruned {
        super::prune::print(&p);
    }
    Ok(0)
}
