//! GTID positions. MariaDB: `domain-server-seq` per replication domain, comma-separated
//! (`0-1-112,1-3-7`); within a domain, with `gtid_strict_mode`, sequence numbers only
//! grow, even across a promotion. MySQL: sets `uuid:1-5:7-9,uuid2:1-3`.

use std::collections::BTreeMap;

use super::Dialect;

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
    /// Parses `uuid:1-5:7,uuid2:1-3`, with MySQL 8.3's tags (`uuid:1-5:tag:1-3`: after
    /// a tag, the ranges are that tag's). A tagged group is kept under `uuid:tag`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut it = part.split(':');
            let uuid = it.next().unwrap_or_default().trim().to_ascii_lowercase();
            if uuid.len() != 36 || !uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                return Err(format!("'{part}' does not start with a server UUID"));
            }
            let mut key = uuid.clone();
            for r in it.map(str::trim) {
                if r.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                    if r.len() > 32 || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(format!("'{part}': '{r}' is not a GTID tag"));
                    }
                    key = format!("{uuid}:{}", r.to_ascii_lowercase());
                    continue;
                }
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                let n = |x: &str| {
                    x.parse::<u64>()
                        .map_err(|_| format!("'{part}': '{r}' is not a range"))
                };
                out.entry(key.clone()).or_default().push((n(a)?, n(b)?));
            }
        }
        let mut set = Self(out);
        set.normalise();
        Ok(set)
    }

    /// Intervals sorted, overlapping and adjacent ones merged, empty UUIDs dropped: one
    /// form per set, so sets compare and count exactly.
    fn normalise(&mut self) {
        for v in self.0.values_mut() {
            v.retain(|(a, b)| a <= b);
            v.sort_unstable();
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(v.len());
            for &(a, b) in v.iter() {
                match merged.last_mut() {
                    Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                    _ => merged.push((a, b)),
                }
            }
            *v = merged;
        }
        self.0.retain(|_, v| !v.is_empty());
    }

    /// Every transaction of either set.
    pub fn union(&self, other: &Self) -> Self {
        let mut out = self.clone();
        for (uuid, ranges) in &other.0 {
            out.0
                .entry(uuid.clone())
                .or_default()
                .extend(ranges.iter().copied());
        }
        out.normalise();
        out
    }

    /// Whether `self` has every transaction of `other` (MySQL's `GTID_SUBSET(other,
    /// self)`).
    pub fn contains(&self, other: &Self) -> bool {
        other.subtract(self).0.is_empty()
    }

    /// Only the transactions written by server `uuid` (tagged or not).
    pub fn of_server(&self, uuid: &str) -> Self {
        let uuid = uuid.trim().to_ascii_lowercase();
        Self(
            self.0
                .iter()
                .filter(|(k, _)| k.split(':').next() == Some(uuid.as_str()))
                .map(|(u, r)| (u.clone(), r.clone()))
                .collect(),
        )
    }

    /// Without the transactions written by server `uuid`.
    pub fn without_server(&self, uuid: &str) -> Self {
        self.subtract(&self.of_server(uuid))
    }

    pub fn count(&self) -> u64 {
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

impl std::fmt::Display for MySqlSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(uuid, ranges)| {
                let mut s = uuid.clone();
                for (a, b) in ranges {
                    if a == b {
                        s.push_str(&format!(":{a}"));
                    } else {
                        s.push_str(&format!(":{a}-{b}"));
                    }
                }
                s
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// A server's GTID history in its family's form, so the role changes are written once
/// for both: MariaDB's position per domain, MySQL's set per server UUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gtids {
    Maria(MariaPos),
    My(MySqlSet),
}

impl Gtids {
    pub fn parse(d: Dialect, text: &str) -> Result<Self, String> {
        Ok(match d {
            Dialect::MariaDb => Self::Maria(MariaPos::parse(text)?),
            Dialect::MySql => Self::My(MySqlSet::parse(text)?),
        })
    }

    /// Nothing at all (a server that never logged a transaction).
    pub fn empty(d: Dialect) -> Self {
        match d {
            Dialect::MariaDb => Self::Maria(MariaPos::default()),
            Dialect::MySql => Self::My(MySqlSet::default()),
        }
    }

    /// Transactions `self` has that `behind` has not (positions of two families never
    /// compare: everything counts as missing).
    pub fn distance(&self, behind: &Self) -> u64 {
        match (self, behind) {
            (Self::Maria(a), Self::Maria(b)) => a.distance(b),
            (Self::My(a), Self::My(b)) => a.distance(b),
            (Self::Maria(a), _) => a.distance(&MariaPos::default()),
            (Self::My(a), _) => a.count(),
        }
    }

    /// Whether `self` holds exactly the history of `other` and perhaps more.
    pub fn contains(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Maria(a), Self::Maria(b)) => a.contains(b),
            (Self::My(a), Self::My(b)) => a.contains(b),
            _ => false,
        }
    }

    /// Everything either holds (MariaDB: per domain the further position).
    pub fn union(&self, other: &Self) -> Self {
        match (self, other) {
            (Self::Maria(a), Self::Maria(b)) => {
                let mut all = a.clone();
                for (d, (s, n)) in &b.0 {
                    if all.0.get(d).is_none_or(|(_, m)| m < n) {
                        all.0.insert(*d, (*s, *n));
                    }
                }
                Self::Maria(all)
            }
            (Self::My(a), Self::My(b)) => Self::My(a.union(b)),
            _ => self.clone(),
        }
    }
}

impl std::fmt::Display for Gtids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Maria(p) => p.fmt(f),
            Self::My(s) => s.fmt(f),
        }
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

    #[test]
    fn mysql_sets_merge_union_contain_and_print_like_the_server() {
        let u1 = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let u2 = "4e11fa47-71ca-11e1-9e33-c80aa9429562";
        let s = |t: &str| MySqlSet::parse(t).expect("set");
        // Overlapping and adjacent intervals merge; the count is exact.
        let a = s(&format!("{u1}:5-9:1-4:12:11, {}:3", u2.to_uppercase()));
        assert_eq!(a.to_string(), format!("{u1}:1-9:11-12,{u2}:3"));
        assert_eq!(a.count(), 12);
        let b = s(&format!("{u1}:10,{u2}:1-2"));
        let all = a.union(&b);
        assert_eq!(all.to_string(), format!("{u1}:1-12,{u2}:1-3"));
        assert!(all.contains(&a) && all.contains(&b) && !a.contains(&all));
        assert!(a.contains(&MySqlSet::default()));
        assert_eq!(all.of_server(u2).to_string(), format!("{u2}:1-3"));
        assert_eq!(s("").to_string(), "");
        // Tagged GTIDs (MySQL 8.3+): the ranges after a tag are the tag's.
        let tagged = s(&format!("{u1}:1-3:Blue:1-2:4,{u1}:7"));
        assert_eq!(tagged.count(), 7);
        assert_eq!(tagged.to_string(), format!("{u1}:1-3:7,{u1}:blue:1-2:4"));
        assert_eq!(tagged.of_server(u1).count(), 7);
        assert_eq!(tagged.without_server(u1).count(), 0);
        assert!(MySqlSet::parse(&format!("{u1}:1-3:bad-tag:1")).is_err());
        // The server prints long sets with a newline after each comma.
        assert_eq!(s(&format!("{u1}:1-3,\n{u2}:1")).count(), 4);
        // Through the family-neutral type.
        let g = |t: &str| Gtids::parse(Dialect::MySql, t).expect("gtids");
        let head = g(&format!("{u1}:1-12"));
        let behind = g(&format!("{u1}:1-9"));
        assert_eq!(head.distance(&behind), 3);
        assert!(head.contains(&behind) && !behind.contains(&head));
        assert_eq!(behind.union(&head), head);
        let m = |t: &str| Gtids::parse(Dialect::MariaDb, t).expect("gtids");
        assert_eq!(m("0-1-5").union(&m("0-2-7,1-1-1")), m("0-2-7,1-1-1"));
        // Two families never contain each other.
        assert!(!head.contains(&m("")));
        assert_eq!(Gtids::empty(Dialect::MySql).to_string(), "");
    }
}
