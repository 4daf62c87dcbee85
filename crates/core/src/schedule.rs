//! When scheduled jobs run (recovery points, scheduled copy policies): every interval
//! after the last run started, or at the times a five-field cron expression names (UTC).
//! Expressions are checked field by field here, for messages that say which field is
//! wrong; the times are computed by `croner`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// When a job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Every this long after the previous run started.
    #[serde(serialize_with = "crate::topology::duration")]
    Every(Duration),
    /// A five-field cron expression (minute hour day-of-month month day-of-week, UTC).
    Cron(String),
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Every(d) => write!(f, "every {}", humantime::format_duration(*d)),
            Self::Cron(c) => write!(f, "cron {c}"),
        }
    }
}

fn cron(expr: &str) -> Option<croner::Cron> {
    croner::parser::CronParser::new().parse(expr).ok()
}

impl Schedule {
    /// A cron schedule, checked.
    pub fn cron(expr: &str) -> Result<Self, String> {
        check_cron(expr)?;
        let Some(c) = cron(expr) else {
            return Err(format!(
                "'{expr}' is not a cron expression this version can evaluate"
            ));
        };
        // `0 0 31 2 *` passes every field check and never fires; leap days fire within
        // 8 years.
        let from = DateTime::<Utc>::from_timestamp(1_767_225_600, 0).unwrap_or_default();
        let fires = c
            .find_next_occurrence(&from, false)
            .is_ok_and(|t| t - from <= chrono::Duration::days(8 * 366));
        if !fires {
            return Err(format!(
                "'{expr}' never fires (no such day in those months); check the day of month and the month"
            ));
        }
        Ok(Self::Cron(expr.trim().to_string()))
    }

    /// When the next run is due, given when the last one started (`None`: never ran).
    /// A run missed while georep was down is due at once.
    pub fn next(&self, last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Self::Every(d) => match last {
                None => now,
                Some(l) => {
                    let due = chrono::Duration::from_std(*d)
                        .ok()
                        .and_then(|d| l.checked_add_signed(d))
                        .unwrap_or(DateTime::<Utc>::MAX_UTC);
                    due.max(now)
                }
            },
            Self::Cron(expr) => {
                let Some(c) = cron(expr) else {
                    return DateTime::<Utc>::MAX_UTC;
                };
                let missed = c
                    .find_previous_occurrence(&now, true)
                    .ok()
                    .is_some_and(|prev| last.is_none_or(|l| l < prev));
                if missed {
                    return now;
                }
                c.find_next_occurrence(&now, false)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC)
            }
        }
    }

    /// The interval the schedule promises: `every`, or for cron the longest gap between
    /// its next 100 runs after `now` (`0 9 * * 1-5` promises 3 days, over a weekend).
    /// Status compares the age of the last run against it.
    pub fn interval(&self, now: DateTime<Utc>) -> Duration {
        match self {
            Self::Every(d) => *d,
            Self::Cron(expr) => cron(expr)
                .and_then(|c| {
                    let times: Vec<DateTime<Utc>> = c.iter_after(now).take(101).collect();
                    times
                        .windows(2)
                        .filter_map(|w| (w[1] - w[0]).to_std().ok())
                        .max()
                })
                .unwrap_or(Duration::from_secs(86_400)),
        }
    }
}

/// A five-field cron expression: each field `*`, a number, a range `a-b`, a list `a,b`
/// or a step `*/n` / `a-b/n`, within the field's bounds.
pub(crate) fn check_cron(expr: &str) -> Result<(), String> {
    const FIELDS: [(&str, u32, u32); 5] = [
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day of month", 1, 31),
        ("month", 1, 12),
        ("day of week", 0, 7),
    ];
    let parts: Vec<&str> = expr.split_whitespace().collect();
    if parts.len() != 5 {
        return Err(format!(
            "'{expr}' has {} fields; a schedule has five: minute hour day-of-month month day-of-week (UTC), e.g. \"*/15 * * * *\"",
            parts.len()
        ));
    }
    for (part, (field, lo, hi)) in parts.iter().zip(FIELDS) {
        for item in part.split(',') {
            let (range, step) = match item.split_once('/') {
                Some((r, s)) => (r, Some(s)),
                None => (item, None),
            };
            if let Some(s) = step {
                if !s.parse::<u32>().is_ok_and(|n| n >= 1 && n <= hi) {
                    return Err(format!(
                        "'{item}': the step of the {field} must be 1 to {hi}"
                    ));
                }
            }
            if range == "*" {
                continue;
            }
            let bounds: Vec<&str> = match range.split_once('-') {
                Some((a, b)) => vec![a, b],
                None => vec![range],
            };
            for b in &bounds {
                match b.parse::<u32>() {
                    Ok(n) if (lo..=hi).contains(&n) => {}
                    _ => {
                        return Err(format!(
                            "'{item}': the {field} must be * or numbers from {lo} to {hi} (names are not supported)"
                        ))
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, h, m, 0)
            .single()
            .expect("time")
    }

    #[test]
    fn every_runs_an_interval_after_the_last_start_and_at_once_when_overdue() {
        let s = Schedule::Every(Duration::from_secs(300));
        assert_eq!(s.next(None, t(10, 0)), t(10, 0), "never ran: now");
        assert_eq!(s.next(Some(t(10, 0)), t(10, 1)), t(10, 5));
        assert_eq!(s.next(Some(t(9, 0)), t(10, 1)), t(10, 1), "overdue: now");
        assert_eq!(s.interval(t(10, 0)), Duration::from_secs(300));
        assert_eq!(s.to_string(), "every 5m");
    }

    #[test]
    fn cron_runs_at_its_times_and_catches_up_a_missed_run() {
        let s = Schedule::cron("*/15 * * * *").expect("cron");
        // Last run at the 10:00 tick; now 10:07: next tick 10:15.
        assert_eq!(s.next(Some(t(10, 0)), t(10, 7)), t(10, 15));
        // The 10:00 tick was missed (last run 9:45): run now.
        assert_eq!(s.next(Some(t(9, 45)), t(10, 7)), t(10, 7));
        assert_eq!(s.interval(t(10, 7)), Duration::from_secs(900));
        let daily = Schedule::cron("0 3 * * *").expect("cron");
        assert_eq!(
            daily.next(Some(t(3, 0)), t(10, 0)),
            t(3, 0) + chrono::Duration::days(1)
        );
        assert_eq!(daily.interval(t(10, 0)), Duration::from_secs(86_400));
        let workdays = Schedule::cron("0 9 * * 1-5").expect("cron");
        assert_eq!(
            workdays.interval(t(10, 0)),
            Duration::from_secs(3 * 86_400),
            "over a weekend"
        );
        let never = Schedule::cron("0 0 31 2 *").expect_err("February 31st");
        assert!(never.contains("never fires"), "{never}");
        assert!(Schedule::cron("0 0 29 2 *").is_ok(), "leap days fire");
        assert!(Schedule::cron("61 * * * *").is_err());
        assert!(Schedule::cron("* * * *").is_err());
    }

    #[test]
    fn cron_fields_are_checked() {
        for ok in [
            "*/15 * * * *",
            "0 3 * * 1-5",
            "5,35 0-23/2 1 1,6,12 0",
            "0 0 31 12 7",
        ] {
            assert!(Schedule::cron(ok).is_ok(), "{ok}");
        }
        for bad in [
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "*/0 * * * *",
            "0 0 * JAN *",
            "a b c d e",
        ] {
            assert!(Schedule::cron(bad).is_err(), "{bad} accepted");
        }
    }
}
