use super::Cli;
use crate::repo::lock::list_locks;
use crate::Result;

#[derive(clap::Args, Debug)]
pub struct UnlockArgs {
    /// Remove every lock, also those of running processes (dangerous while they run).
    #[arg(long)]
    remove_all: bool,
}

/// `locks`: who holds the repository.
pub fn list(cli: &Cli) -> Result<i32> {
    let repo = cli.open()?;
    let locks = list_locks(&*repo.backend)?;
    if cli.json {
        let rows: Vec<_> = locks
            .iter()
            .map(|l| {
                serde_json::json!({
                    "name": l.name,
                    "lock": l.info,
                    "stale": l.stale,
                })
            })
            .collect();
        cli.print_json(&rows);
        return Ok(0);
    }
    for l in &locks {
        let stale = l
            .stale
            .as_ref()
            .map(|r| format!(" — STALE: {r}"))
            .unwrap_or_default();
        match &l.info {
            Some(i) => println!("{}: {}{stale}", l.name, i.describe()),
            None => println!(
                "{}: unreadable (damaged, or from a newer cairn; held until 30 min old){stale}",
                l.name
            ),
        }
    }
    println!("{}", super::plural(locks.len(), "lock"));
    Ok(0)
}

/// `unlock`: remove stale locks, or with --remove-all every lock.
pub fn unlock(cli: &Cli, a: &UnlockArgs) -> Result<i32> {
    let repo = cli.open()?;
    let mut removed = 0;
    for l in list_locks(&*repo.backend)? {
        if a.remove_all || l.stale.is_some() {
            if l.stale.is_none() {
                eprintln!(
                    "warning: removing a live lock {} ({}): its process may still be writing",
                    l.name,
                    l.info
                        .as_ref()
                        .map(|i| i.describe())
                        .unwrap_or_else(|| "unreadable".into())
                );
            }
            repo.backend.delete(&l.name)?;
            removed += 1;
        }
    }
    if cli.json {
        cli.print_json(&serde_json::json!({ "removed": removed }));
    } else {
        println!("removed {}", super::plural(removed, "lock"));
    }
    Ok(0)
}
