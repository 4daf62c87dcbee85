//! Byte sizes (`50M`, `1.5GiB`), durations (`90s`, `5m`) and delete limits (`100`, `5%`).

use std::time::Duration;

/// A size, duration or limit that could not be parsed; the message says what is accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("invalid size {0:?}: use a number of bytes with an optional K, M, G or T suffix (powers of 1024), e.g. 50M")]
    Size(String),
    #[error("invalid duration {0:?}: use a number with a unit, e.g. 500ms, 30s, 5m, 1h")]
    Duration(String),
    #[error("duration {0:?} is too long: the maximum is 100 years")]
    DurationTooLong(String),
    #[error(
        "invalid delete limit {0:?}: use a count (100) or a percentage of the destination (5%)"
    )]
    MaxDelete(String),
}

/// Parses a byte count. Suffixes K, M, G, T are powers of 1024 (as rclone reads them);
/// an optional `i` and/or `B` after the suffix is accepted (`50MiB`, `50MB`, `50M`).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let err = || SizeError::Size(text.to_string());
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(err());
    }
    let value: f64 = number.parse().map_err(|_| err())?;
    let unit = unit.trim();
    let unit = unit.strip_suffix('B').unwrap_or(unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let multiplier: u64 = match unit {
        "" => 1,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        "t" | "T" => 1 << 40,
        _ => return Err(err()),
    };
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(err());
    }
    Ok(bytes.round() as u64)
}

/// The longest duration accepted anywhere (100 years of 365.25 days): adding it to a clock reading can never
/// overflow, so no deadline or timer built from a parsed duration panics.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// Parses a duration such as `500ms`, `30s`, `5m`, `1h 30m`, at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, SizeError> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|_| SizeError::Duration(text.to_string()))?;
    if d > MAX_DURATION {
        return Err(SizeError::DurationTooLong(text.to_string()));
    }
    Ok(d)
}

/// How many destination objects one `sync --delete` may remove before it refuses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxDelete {
    /// At most this many objects.
    Count(u64),
    /// At most this share (0–100) of the objects found at the destination.
    Percent(f64),
}

impl MaxDelete {
    /// Parses `100` or `5%` / `2.5%`.
    pub fn parse(text: &str) -> Result<Self, SizeError> {
        let t = text.trim();
        let err = || SizeError::MaxDelete(text.to_string());
        if let Some(p) = t.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| err())?;
            if !(0.0..=100.0).contains(&p) {
                return Err(err());
            }
            Ok(Self::Percent(p))
        } else {
            t.parse().map(Self::Count).map_err(|_| err())
        }
    }

    /// Whether deleting `deletes` of `dest_total` objects stays within the limit.
    pub fn allows(&self, deletes: u64, dest_total: u64) -> bool {
        match *self {
            Self::Count(n) => deletes <= n,
            Self::Percent(p) => {
                dest_total == 0 || (deletes as f64) * 100.0 <= p * dest_total as f64
            }
        }
    }
}

impl std::fmt::Display for MaxDelete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Count(n) => write!(f, "{n}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("4096", Some(4096)),
            ("4K", Some(4096)),
            ("50M", Some(50 << 20)),
            ("50MiB", Some(50 << 20)),
            ("50MB", Some(50 << 20)),
            ("1.5G", Some(3 << 29)),
            ("2T", Some(2 << 40)),
            ("", None),
            ("M", None),
            ("12X", None),
            ("-1", None),
            ("1.2.3K", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_size(input).ok(), *want, "input {input:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5").is_err());
        assert_eq!(parse_duration("100years"), Ok(MAX_DURATION));
        assert_eq!(
            parse_duration("18000000000000000000s"),
            Err(SizeError::DurationTooLong("18000000000000000000s".into()))
        );
        assert!(parse_duration("101years").is_err());
    }

    #[test]
    fn max_delete() {
        assert_eq!(MaxDelete::parse("10"), Ok(MaxDelete::Count(10)));
        assert_eq!(MaxDelete::parse("5%"), Ok(MaxDelete::Percent(5.0)));
        assert!(MaxDelete::parse("101%").is_err());
        assert!(MaxDelete::parse("ten").is_err());
        assert!(MaxDelete::Count(2).allows(2, 10));
        assert!(!MaxDelete::Count(2).allows(3, 10));
        assert!(MaxDelete::Percent(50.0).allows(5, 10));
        assert!(!MaxDelete::Percent(50.0).allows(6, 10));
        assert!(MaxDelete::Percent(0.0).allows(0, 10));
    }
}
