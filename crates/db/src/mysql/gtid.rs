//! GTID positions. MariaDB: `domain-server-seq` per replication domain, comma-separated
//! (`0-1-112,1-3-7`); within a domain, with `gtid_strict_mode`, sequence numbers only
//! grow, even across a promotion. MySQL: sets `uuid:1-5:7-9,uuid2:1-3`.

use std::collections::BTreeMap;

/// A MariaDB GTID position: the last sequence number per domain (and who wrote it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MariaPos(pub BTreeMap<u32, (u32, u64)>);

impl MariaPos {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut it = part.split('-');
            let (Some(d), Some(s), Some(n), None) = (it.next(), it.next(), it.next(), it.next())
            else {
                return Err(format!(
                    "'{part}' is not a MariaDB GTID (domain-server-sequence)"
                ));
            };
            let num = |x: &str| {
                x.parse::<u64>()
                    .map_err(|_| format!("'{part}' is not a MariaDB GTID"))
            };
            let domain =
                u32::try_from(num(d)?).map_err(|_| format!("'{part}': domain out of range"))?;
            let server =
                u32::try_from(num(s)?).map_err(|_| format!("'{part}': server out of range"))?;
            out.insert(domain, (server, num(n)?));
        }
        Ok(Self(out))
    }

    /// Transactions `self` has that `behind` has not applied, summed over domains
    /// (exact under `gtid_strict_mode`).
    pub fn distance(&self, behind: &Self) -> u64 {
        self.0
            .iter()
            .map(|(d, (_, n))| n.saturating_sub(behind.0.get(d).map_or(0, |(_, m)| *m)))
            .sum()
    }

    /// Whether `self` has exactly the history of `other` and perhaps more: each domain
    /// further, or as far *from the same server* (the same sequence number written by
    /// two servers is a divergence, which `covers` does not see).
    pub fn contains(&self, other: &Self) -> bool {
        other.0.iter().all(|(d, (s, n))| {
            self.0
                .get(d)
                .is_some_and(|(ms, m)| m > n || (m == n && ms == s))
        })
    }

    /// Whether `self` has every transaction of `other` (each domain at least as far).
    pub fn covers(&self, other: &Self) -> bool {
        other
            .0
            .iter()
            .all(|(d, (_, n))| self.0.get(d).is_some_and(|(_, m)| m >= n))
    }
}

impl std::fmt::Display for MariaPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(d, (s, n))| format!("{d}-{s}-{n}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// A MySQL GTID set: per source UUID, the intervals of transaction numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MySqlSet(pub BTreeMap<String, Vec<(u64, u64)>>);

impl MySqlSet {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut it = part.split(':');
            let uuid = it.next().unwrap_or_default().to_ascii_lowercase();
            if uuid.len() != 36 {
                return Err(format!("'{part}' does not start with a server UUID"));
            }
            let ranges = out.entry(uuid).or_default();
            for r in it {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                let n = |x: &str| {
                    x.parse::<u64>()
                        .map_err(|_| format!("'{part}': '{r}' is not a range"))
                };
                ranges.push((n(a)?, n(b)?));
            }
        }
        for v in out.values_mut() {
            v.sort_unstable();
        }
        Ok(Self(out))
    }

    fn count(&self) -> u64 {
        self.0
            .values()
            .flatten()
            .map(|(a, b)| b.saturating_sub(*a) + 1)
            .sum()
    }

    /// Transactions in `self` that are not in `other` (MySQL's `GTID_SUBTRACT`).
    pub fn subtract(&self, other: &Self) -> Self {
        let mut out = BTreeMap::new();
        for (uuid, ranges) in &self.0 {
            let minus = other.0.get(uuid).cloned().unwrap_or_default();
            let mut left = Vec::new();
            for &(a, b) in ranges {
                let mut pieces = vec![(a, b)];
                for &(x, y) in &minus {
                    pieces = pieces
                        .into_iter()
                        .flat_map(|(p, q)| {
                            let mut v = Vec::new();
                            if y < p || x > q {
                                v.push((p, q));
                            } else {
                                if x > p {
                                    v.push((p, x - 1));
                                }
                                if y < q {
                                    v.push((y + 1, q));
                                }
                            }
                            v
                        })
                        .collect();
                }
                left.extend(pieces);
            }
            if !left.is_empty() {
                out.insert(uuid.clone(), left);
            }
        }
        Self(out)
    }

    /// Transactions of `self` missing from `behind`.
    pub fn distance(&self, behind: &Self) -> u64 {
        self.subtract(behind).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_positions_compare_per_domain() {
        let primary = MariaPos::parse("0-2-112,1-3-7").expect("parse");
        let replica = MariaPos::parse("0-1-100").expect("parse");
        assert_eq!(primary.distance(&replica), 12 + 7);
        assert!(!replica.covers(&primary));
        assert!(primary.covers(&replica));
        assert_eq!(primary.to_string(), "0-2-112,1-3-7");
        assert_eq!(MariaPos::parse("").expect("empty"), MariaPos::default());
        assert!(MariaPos::parse("0-1").is_err());
        assert!(MariaPos::parse("a-b-c").is_err());
    }

    #[test]
    fn containing_a_position_needs_the_same_writer_at_the_same_sequence_number() {
        let p = |s: &str| MariaPos::parse(s).expect("gtid");
        assert!(p("0-2-151").contains(&p("0-1-150")));
        assert!(p("0-1-151").contains(&p("0-1-151")));
        // Same number, another server: diverged, though `covers` says yes.
        assert!(!p("0-2-151").contains(&p("0-1-151")));
        assert!(p("0-2-151").covers(&p("0-1-151")));
        assert!(!p("0-2-150").contains(&p("0-1-151")));
        assert!(!p("").contains(&p("1-1-1")));
    }

    #[test]
    fn mysql_sets_subtract_like_gtid_subtract() {
        let u1 = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let u2 = "4e11fa47-71ca-11e1-9e33-c80aa9429562";
        let primary = MySqlSet::parse(&format!("{u1}:1-10:12, {u2}:1-3")).expect("parse");
        let replica = MySqlSet::parse(&format!("{u1}:1-8")).expect("parse");
        assert_eq!(primary.distance(&replica), 2 + 1 + 3);
        // Errant: on the replica, not on the primary.
        let errant = MySqlSet::parse(&format!("{u1}:1-8:20"))
            .expect("parse")
            .subtract(&primary);
        assert_eq!(errant.0.get(u1), Some(&vec![(20, 20)]));
        assert!(MySqlSet::parse("nope:1-2").is_err());
    }
}
