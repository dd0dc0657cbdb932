//! `forget`: apply retention policies and remove the snapshot files they do not keep.
//! Also the repository's stored policies (`policies`) and protection markers (`protected/`).
//!
//! Forget deletes only manifests, never data, so it needs just a shared lock and runs
//! safely beside backups; the space comes back with `prune`.

use crate::repo::envelope::{self, FileKind};
use crate::repo::lock::LockKind;
use crate::repo::Repository;
use crate::retention::{self, glob_match, Item, Policy};
use crate::snapshot::{self, Snapshot};
use crate::{Error, Id, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

use crate::repo::files::POLICIES;

/// A policy stored in the repository for the VMs whose name matches `vm` (`*`, `?`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoredPolicy {
    pub vm: String,
    pub policy: Policy,
}

pub fn load_policies(repo: &Repository) -> Result<Vec<StoredPolicy>> {
    if repo.backend.size(POLICIES)?.is_none() {
        return Ok(Vec::new());
    }
    let bytes = repo.backend.get(POLICIES)?;
    let json = envelope::decode_file(FileKind::Policies, &repo.keys, &bytes, POLICIES)?;
    let list: Vec<StoredPolicy> = serde_json::from_slice(&json).map_err(|e| {
        Error::corrupt(
            POLICIES,
            format!("{e}; a newer cairn may have written rules this one does not know, upgrade it"),
        )
    })?;
    // A policy without rules would remove every unprotected snapshot of its VMs.
    if let Some(p) = list.iter().find(|p| p.policy.is_empty()) {
        return Err(Error::corrupt(
            POLICIES,
            format!(
                "the policy for {:?} has no keep rule; fix it with `cairn policy set`",
                p.vm
            ),
        ));
    }
    Ok(list)
}

/// Replaces the stored policies (atomically: readers see the old or the new list).
pub fn save_policies(repo: &Repository, list: &[StoredPolicy]) -> Result<()> {
    let json = serde_json::to_vec(list).expect("policies serialize");
    let bytes = envelope::encode_file(FileKind::Policies, &repo.keys, &json, 3);
    repo.backend.put(POLICIES, &bytes)
}

fn marker(id: &Id) -> String {
    crate::repo::files::protected(id)
}

pub fn protected_ids(repo: &Repository) -> Result<HashSet<Id>> {
    Ok(repo
        .list(crate::repo::files::Folder::Protected)?
        .iter()
        .filter_map(|l| l.id())
        .collect())
}

/// Marks or unmarks a snapshot as protected: a protected snapshot is never forgotten.
pub fn set_protected(repo: &Repository, id: &Id, protect: bool) -> Result<()> {
    if protect {
        let body = serde_json::json!({ "time": chrono::Utc::now().to_rfc3339(), "host": crate::repo::hostname() });
        repo.backend.put(&marker(id), body.to_string().as_bytes())
    } else {
        repo.backend.delete(&marker(id))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    Vm,
    Host,
    VmHost,
}

impl GroupBy {
    pub fn parse(s: &str) -> std::result::Result<GroupBy, String> {
        match s {
            "vm" => Ok(GroupBy::Vm),
            "host" => Ok(GroupBy::Host),
            "vm,host" | "host,vm" => Ok(GroupBy::VmHost),
            _ => Err(format!("{s:?}: group by vm, host or vm,host")),
        }
    }

    fn key(self, s: &Snapshot) -> String {
        match self {
            GroupBy::Vm => s.vm.clone(),
            GroupBy::Host => s.host.clone(),
            GroupBy::VmHost => format!("{}@{}", s.vm, s.host),
        }
    }
}

pub struct ForgetOptions {
    /// Snapshots named on the command line (id prefixes): removed whatever the policies say,
    /// damaged ones too. When given, no policy applies.
    pub ids: Vec<String>,
    /// The policy from the command line; None means the stored policies.
    pub policy: Option<Policy>,
    pub vm: Option<String>,
    pub group_by: GroupBy,
    pub dry_run: bool,
}

#[derive(Debug, Serialize)]
pub struct Decision {
    pub id: String,
    pub short_id: String,
    pub vm: String,
    pub time: String,
    /// The rules that keep it; empty for a removed snapshot.
    pub reasons: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct GroupReport {
    pub group: String,
    /// The stored policy's VM pattern that applied, with `--policy`.
    pub policy: Option<String>,
    pub keep: Vec<Decision>,
    pub remove: Vec<Decision>,
}

#[derive(Debug, Serialize)]
pub struct ForgetReport {
    pub dry_run: bool,
    pub groups: Vec<GroupReport>,
    pub kept: usize,
    pub removed: usize,
    /// Snapshot files that cannot be read: no policy can judge them, so they stay until
    /// named (`cairn forget ID`) or repaired.
    pub damaged: Vec<snapshot::Damaged>,
}

pub fn forget(repo: &Repository, opts: &ForgetOptions) -> Result<ForgetReport> {
    if opts.ids.is_empty() && opts.policy.as_ref().is_some_and(Policy::is_empty) {
        return Err(Error::Usage(
            "no keep rule given; that would remove every snapshot. Give --keep-* options, --policy, or the snapshots to remove".into(),
        ));
    }
    let _lock = repo.lock(LockKind::Shared, "forget")?;
    let protected = protected_ids(repo)?;
    let loaded = snapshot::load_all(repo)?;
    if !opts.ids.is_empty() {
        return forget_named(repo, loaded, &opts.ids, &protected, opts.dry_run);
    }
    let stored = match opts.policy {
        Some(_) => Vec::new(),
        None => load_policies(repo)?,
    };
    let mut groups: BTreeMap<String, Vec<(Id, Snapshot)>> = BTreeMap::new();
    for (id, s) in loaded.snapshots {
        if opts.vm.as_ref().is_none_or(|v| &s.vm == v) {
            groups
                .entry(opts.group_by.key(&s))
                .or_default()
                .push((id, s));
        }
    }
    let mut report = ForgetReport {
        dry_run: opts.dry_run,
        groups: Vec::new(),
        kept: 0,
        removed: 0,
        damaged: loaded.damaged,
    };
    for (group, snaps) in groups {
        let (policy, pattern) = match &opts.policy {
            Some(p) => (Some(p.clone()), None),
            None => match stored.iter().find(|sp| glob_match(&sp.vm, &snaps[0].1.vm)) {
                Some(sp) => (Some(sp.policy.clone()), Some(sp.vm.clone())),
                None => (None, None), // no stored policy: keep everything
            },
        };
        let mut items = Vec::with_capacity(snaps.len());
        for (id, s) in &snaps {
            items.push(Item {
                time: s.parsed_time().ok_or_else(|| {
                    Error::corrupt(
                        format!("snapshot {}", id.short()),
                        format!("bad time {:?}", s.time),
                    )
                })?,
                tags: s.tags.clone(),
                protected: protected.contains(id),
            });
        }
        let reasons = match &policy {
            Some(p) => retention::apply(p, &items),
            None => vec![vec!["no policy".to_string()]; items.len()],
        };
        let mut g = GroupReport {
            group,
            policy: pattern,
            keep: Vec::new(),
            remove: Vec::new(),
        };
        for ((id, s), why) in snaps.iter().zip(reasons) {
            let d = Decision {
                id: id.to_hex(),
                short_id: id.short(),
                vm: s.vm.clone(),
                time: s.time.clone(),
                reasons: why,
            };
            if d.reasons.is_empty() {
                if !opts.dry_run {
                    repo.delete_snapshot(id)?;
                }
                g.remove.push(d);
            } else {
                g.keep.push(d);
            }
        }
        report.kept += g.keep.len();
        report.removed += g.remove.len();
        report.groups.push(g);
    }
    Ok(report)
}

/// `forget ID…`: removes exactly the named snapshots, readable or damaged. Each id prefix
/// must name one snapshot; a protected one is refused.
fn forget_named(
    repo: &Repository,
    loaded: snapshot::Loaded,
    ids: &[String],
    protected: &HashSet<Id>,
    dry_run: bool,
) -> Result<ForgetReport> {
    // (file name, hex id, vm, time) of every snapshot file.
    let all: Vec<(String, String, String, String)> = loaded
        .snapshots
        .iter()
        .map(|(id, s)| {
            (
                crate::repo::files::snapshot(id),
                id.to_hex(),
                s.vm.clone(),
                s.time.clone(),
            )
        })
        .chain(loaded.damaged.iter().map(|d| {
            let hex =
                d.id.clone()
                    .unwrap_or_else(|| d.name.rsplit('/').next().unwrap_or("").to_string());
            (d.name.clone(), hex, "(damaged)".to_string(), String::new())
        }))
        .collect();
    let mut chosen = Vec::new();
    for spec in ids {
        let prefix = spec.to_ascii_lowercase();
        let hits: Vec<&(String, String, String, String)> = all
            .iter()
            .filter(|a| !prefix.is_empty() && a.1.starts_with(&prefix))
            .collect();
        let hit = match hits.as_slice() {
            [one] => *one,
            [] => {
                return Err(Error::Usage(format!(
                    "no snapshot matches {spec:?}; see `cairn snapshots`"
                )))
            }
            _ => {
                return Err(Error::Usage(format!(
                    "{} snapshots start with {spec:?}; give more digits",
                    hits.len()
                )))
            }
        };
        if Id::from_hex(&hit.1).is_some_and(|id| protected.contains(&id)) {
            return Err(Error::Usage(format!(
                "snapshot {} is protected; `cairn unprotect {}` first",
                &hit.1[..8.min(hit.1.len())],
                &hit.1[..8.min(hit.1.len())]
            )));
        }
        if !chosen.contains(&hit) {
            chosen.push(hit);
        }
    }
    let mut g = GroupReport {
        group: "named".into(),
        policy: None,
        keep: Vec::new(),
        remove: Vec::new(),
    };
    for (name, hex, vm, time) in chosen {
        if !dry_run {
            repo.delete_listed(name)?;
        }
        g.remove.push(Decision {
            id: hex.clone(),
            short_id: hex.chars().take(8).collect(),
            vm: vm.clone(),
            time: time.clone(),
            reasons: Vec::new(),
        });
    }
    let removed = g.remove.len();
    let damaged = loaded
        .damaged
        .into_iter()
        .filter(|d| !g.remove.iter().any(|r| d.name.ends_with(&r.id)))
        .collect();
    Ok(ForgetReport {
        dry_run,
        groups: vec![g],
        kept: 0,
        removed,
        damaged,
    })
}
