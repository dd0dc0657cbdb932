//! Retention policy: which snapshots `forget` keeps. Pure logic, no I/O.
//!
//! The rules follow restic's, which most administrators know. Within one group (by default
//! one VM), snapshots are walked newest first:
//!
//! * `keep-last N` keeps the N newest;
//! * `keep-hourly/daily/weekly/monthly/yearly N` keep the newest snapshot of each of the
//!   last N periods that have a snapshot (weeks are ISO 8601 weeks);
//! * `keep-within D` keeps every snapshot less than D older than the group's newest;
//! * `keep-tag T` keeps every snapshot carrying tag T;
//! * a protected snapshot is always kept.
//!
//! A snapshot survives if any rule keeps it. Periods are read in the time zone recorded with
//! each snapshot (its RFC 3339 offset), i.e. the proxy's local calendar at backup time.

use chrono::{DateTime, Datelike, FixedOffset, Timelike};
use serde::{Deserialize, Serialize};

/// Unknown fields are refused when read back: a rule this build does not know must not be
/// silently dropped, which would remove snapshots the rule keeps.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_tags: Vec<String>,
}

impl Policy {
    /// True if no rule is set: such a policy would remove everything, which `forget` refuses.
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }
}

/// One snapshot as retention sees it.
#[derive(Clone, Debug)]
pub struct Item {
    pub time: DateTime<FixedOffset>,
    pub tags: Vec<String>,
    pub protected: bool,
}

/// Why a snapshot is kept: empty means it is removed.
pub type Reasons = Vec<String>;

fn period(rule: &str, t: &DateTime<FixedOffset>) -> i64 {
    let (y, m, d) = (t.year() as i64, t.month() as i64, t.day() as i64);
    match rule {
        "hourly" => ((y * 100 + m) * 100 + d) * 100 + t.hour() as i64,
        "daily" => (y * 100 + m) * 100 + d,
        "weekly" => {
            let w = t.iso_week();
            w.year() as i64 * 100 + w.week() as i64
        }
        "monthly" => y * 100 + m,
        _ => y,
    }
}

/// Decides every snapshot of one group. Returns reasons in the same order as `items`.
pub fn apply(policy: &Policy, items: &[Item]) -> Vec<Reasons> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    // Newest first; ties broken by position so the result is deterministic.
    order.sort_by(|&a, &b| items[b].time.cmp(&items[a].time).then(b.cmp(&a)));
    let mut reasons = vec![Vec::new(); items.len()];
    let newest = order.first().map(|&i| items[i].time);
    let mut buckets: Vec<(&str, u32, Option<i64>)> = [
        ("hourly", policy.keep_hourly),
        ("daily", policy.keep_daily),
        ("weekly", policy.keep_weekly),
        ("monthly", policy.keep_monthly),
        ("yearly", policy.keep_yearly),
    ]
    .into_iter()
    .filter_map(|(r, n)| n.map(|n| (r, n, None)))
    .collect();
    for (rank, &i) in order.iter().enumerate() {
        let it = &items[i];
        let why = &mut reasons[i];
        if it.protected {
            why.push("protected".into());
        }
        if policy.keep_last.is_some_and(|n| (rank as u64) < n as u64) {
            why.push("last".into());
        }
        if let (Some(within), Some(newest)) = (policy.keep_within, newest) {
            if (newest - it.time).num_seconds() < within {
                why.push("within".into());
            }
        }
        if let Some(t) = policy.keep_tags.iter().find(|t| it.tags.contains(t)) {
            why.push(format!("tag {t}"));
        }
        for (rule, left, last) in buckets.iter_mut() {
            if *left == 0 {
                continue;
            }
            let p = period(rule, &it.time);
            if *last != Some(p) {
                *last = Some(p);
                *left -= 1;
                why.push((*rule).to_string());
            }
        }
    }
    reasons
}

/// Parses durations such as `10d`, `2w`, `36h`, `1y6m` (y = 365 d, m = 30 d) into seconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let mut total = 0i64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration (examples: 10d, 2w, 36h)"))?;
        num.clear();
        total += n * match c {
            'h' => 3600,
            'd' => 86400,
            'w' => 7 * 86400,
            'm' => 30 * 86400,
            'y' => 365 * 86400,
            _ => return Err(format!("{s:?}: unknown unit {c:?} (use h, d, w, m, y)")),
        };
    }
    if !num.is_empty() || total == 0 {
        return Err(format!("{s:?} is not a duration (examples: 10d, 2w, 36h)"));
    }
    Ok(total)
}

/// Shell-style wildcard match (`*`, `?`) for VM name patterns in stored policies.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            pi += 1;
            mark = ni;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored policy with a rule this build does not know is refused, not read as a
    /// policy without that rule (which would remove what the rule keeps).
    #[test]
    fn unknown_rules_are_refused() {
        let p: Policy = serde_json::from_str(r#"{"keep_daily":7}"#).unwrap();
        assert_eq!(p.keep_daily, Some(7));
        assert!(
            serde_json::from_str::<Policy>(r#"{"keep_daily":7,"keep_fortnightly":2}"#).is_err()
        );
    }
    use chrono::{Duration, TimeZone};
    use std::collections::{BTreeMap, BTreeSet};

    fn at(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    fn items(times: &[DateTime<FixedOffset>]) -> Vec<Item> {
        times
            .iter()
            .map(|&time| Item {
                time,
                tags: vec![],
                protected: false,
            })
            .collect()
    }

    fn kept(policy: &Policy, items: &[Item]) -> BTreeSet<usize> {
        apply(policy, items)
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.is_empty())
            .map(|(i, _)| i)
            .collect()
    }

    /// The independent expectation for one bucket rule: group by period, take the N most
    /// recent periods, keep the newest snapshot of each.
    fn expect_bucket(rule: &str, n: u32, items: &[Item]) -> BTreeSet<usize> {
        let mut groups: BTreeMap<i64, usize> = BTreeMap::new();
        for (i, it) in items.iter().enumerate() {
            let e = groups.entry(period(rule, &it.time)).or_insert(i);
            if items[*e].time < it.time || (items[*e].time == it.time && *e < i) {
                *e = i;
            }
        }
        groups.values().rev().take(n as usize).copied().collect()
    }

    /// Deterministic generator for irregular schedules.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Times in Europe/Berlin's recorded offsets: +01:00 in winter, +02:00 in summer.
    fn berlin(utc: DateTime<chrono::Utc>) -> DateTime<FixedOffset> {
        let y = utc.year();
        // Last Sunday of March / October, 01:00 UTC.
        let last_sunday = |m: u32| {
            let d = (25..=31)
                .rev()
                .find(|&d| {
                    chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap().weekday()
                        == chrono::Weekday::Sun
                })
                .unwrap();
            chrono::Utc.with_ymd_and_hms(y, m, d, 1, 0, 0).unwrap()
        };
        let summer = utc >= last_sunday(3) && utc < last_sunday(10);
        utc.with_timezone(&FixedOffset::east_opt(if summer { 7200 } else { 3600 }).unwrap())
    }

    fn schedules() -> Vec<(&'static str, Vec<Item>)> {
        let start = chrono::Utc.with_ymd_and_hms(2023, 1, 1, 0, 30, 0).unwrap();
        let hourly: Vec<_> = (0..2 * 365 * 24)
            .map(|h| berlin(start + Duration::hours(h)))
            .collect();
        let daily: Vec<_> = (0..3 * 365)
            .map(|d| berlin(start + Duration::days(d) + Duration::hours(1)))
            .collect();
        let mut rng = Rng(7);
        let mut t = start;
        let mut irregular = Vec::new();
        for _ in 0..3000 {
            t += Duration::minutes((rng.next() % (3 * 24 * 60)) as i64);
            irregular.push(berlin(t));
        }
        vec![
            ("hourly", items(&hourly)),
            ("daily", items(&daily)),
            ("irregular", items(&irregular)),
        ]
    }

    #[test]
    fn bucket_rules_match_the_grouping_expectation() {
        for (name, its) in schedules() {
            for (rule, n) in [
                ("hourly", 30),
                ("daily", 10),
                ("weekly", 8),
                ("monthly", 14),
                ("yearly", 5),
            ] {
                let mut p = Policy::default();
                match rule {
                    "hourly" => p.keep_hourly = Some(n),
                    "daily" => p.keep_daily = Some(n),
                    "weekly" => p.keep_weekly = Some(n),
                    "monthly" => p.keep_monthly = Some(n),
                    _ => p.keep_yearly = Some(n),
                }
                assert_eq!(
                    kept(&p, &its),
                    expect_bucket(rule, n, &its),
                    "{name} schedule, keep-{rule} {n}"
                );
            }
            // Combined rules keep the union of what each keeps.
            let p = Policy {
                keep_daily: Some(7),
                keep_weekly: Some(4),
                keep_monthly: Some(12),
                ..Default::default()
            };
            let union: BTreeSet<usize> = [("daily", 7), ("weekly", 4), ("monthly", 12)]
                .iter()
                .flat_map(|&(r, n)| expect_bucket(r, n, &its))
                .collect();
            assert_eq!(kept(&p, &its), union, "{name}");
        }
    }

    #[test]
    fn dst_days_follow_the_recorded_offset() {
        // 2024-03-31 02:00 local does not exist in Berlin; 2024-10-27 02:30 happens twice.
        let its = items(&[
            at("2024-03-30T23:30:00+01:00"),
            at("2024-03-31T00:30:00+01:00"),
            at("2024-03-31T03:30:00+02:00"),
            at("2024-10-27T02:30:00+02:00"),
            at("2024-10-27T02:30:00+01:00"),
        ]);
        let p = Policy {
            keep_daily: Some(10),
            ..Default::default()
        };
        // One per local day: 03-30, 03-31 (the 03:30 one), 10-27 (the later, +01:00 one).
        assert_eq!(kept(&p, &its), BTreeSet::from([0, 2, 4]));
        let p = Policy {
            keep_hourly: Some(10),
            ..Default::default()
        };
        // The repeated 02:30 hour is one local hour: only its later snapshot is kept.
        assert_eq!(kept(&p, &its), BTreeSet::from([0, 1, 2, 4]));
    }

    #[test]
    fn within_tags_protection_and_reasons() {
        let mut its = items(&[
            at("2026-01-01T00:00:00Z"),
            at("2026-01-05T00:00:00Z"),
            at("2026-01-09T00:00:00Z"),
            at("2026-01-10T00:00:00Z"),
        ]);
        its[0].tags = vec!["monthly-archive".into()];
        its[1].protected = true;
        let p = Policy {
            keep_within: Some(parse_duration("2d").unwrap()),
            keep_tags: vec!["monthly-archive".into()],
            ..Default::default()
        };
        let r = apply(&p, &its);
        assert_eq!(r[0], vec!["tag monthly-archive"]);
        assert_eq!(r[1], vec!["protected"]);
        assert_eq!(r[2], vec!["within"]);
        assert_eq!(r[3], vec!["within"]);
        let r = apply(
            &Policy {
                keep_last: Some(1),
                ..Default::default()
            },
            &its,
        );
        assert!(r[2].is_empty() && r[3] == vec!["last"]);
    }

    #[test]
    fn properties_over_random_histories() {
        let mut rng = Rng(99);
        for case in 0..300 {
            let n = 1 + (rng.next() % 60) as usize;
            let base = chrono::Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0).unwrap();
            let mut its: Vec<Item> = (0..n)
                .map(|_| Item {
                    time: berlin(base + Duration::minutes((rng.next() % (400 * 24 * 60)) as i64)),
                    tags: if rng.next() % 9 == 0 {
                        vec!["keep".into()]
                    } else {
                        vec![]
                    },
                    protected: rng.next() % 13 == 0,
                })
                .collect();
            let pick = |r: &mut Rng, m: u64| (r.next() % 4 != 0).then(|| (r.next() % m) as u32 + 1);
            let p = Policy {
                keep_last: pick(&mut rng, 5),
                keep_daily: pick(&mut rng, 8),
                keep_weekly: pick(&mut rng, 5),
                keep_monthly: pick(&mut rng, 6),
                keep_yearly: pick(&mut rng, 2),
                keep_tags: if rng.next() % 2 == 0 {
                    vec!["keep".into()]
                } else {
                    vec![]
                },
                ..Default::default()
            };
            let k = kept(&p, &its);
            let newest = (0..n)
                .max_by(|&a, &b| its[a].time.cmp(&its[b].time).then(a.cmp(&b)))
                .unwrap();
            let time_rule = [
                p.keep_last,
                p.keep_daily,
                p.keep_weekly,
                p.keep_monthly,
                p.keep_yearly,
            ]
            .iter()
            .any(|r| r.is_some());
            if time_rule {
                assert!(k.contains(&newest), "case {case}: newest removed");
            }
            for (i, it) in its.iter().enumerate() {
                if it.protected {
                    assert!(k.contains(&i), "case {case}: protected snapshot removed");
                }
            }
            // Applying the policy to what it kept removes nothing more.
            let survivors: Vec<Item> = k.iter().map(|&i| its[i].clone()).collect();
            assert_eq!(
                kept(&p, &survivors).len(),
                survivors.len(),
                "case {case}: not idempotent"
            );
            // keep-last N alone keeps exactly min(N, n).
            if let Some(l) = p.keep_last {
                its.iter_mut().for_each(|i| i.protected = false);
                let last = Policy {
                    keep_last: Some(l),
                    ..Default::default()
                };
                assert_eq!(kept(&last, &its).len(), (l as usize).min(n), "case {case}");
            }
        }
    }

    #[test]
    fn durations_and_globs() {
        assert_eq!(parse_duration("10d"), Ok(864000));
        assert_eq!(parse_duration("1w2d"), Ok(9 * 86400));
        assert!(parse_duration("10").is_err() && parse_duration("5x").is_err());
        assert!(glob_match("web*", "web01") && glob_match("*", "x") && glob_match("db?", "db1"));
        assert!(!glob_match("web*", "db01") && !glob_match("db?", "db10"));
    }
}
