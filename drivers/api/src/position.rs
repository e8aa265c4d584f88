//! Transaction positions: a PostgreSQL WAL location ([`Lsn`]) or a MySQL/MariaDB GTID set
//! ([`GtidSet`]), behind one [`Position`] type that serializes, compares and refuses to compare
//! across kinds.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a position could not be parsed or compared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PositionError {
    /// The text is not a position of the expected kind.
    #[error("invalid {kind} '{text}': {reason}")]
    Parse {
        /// `LSN` or `GTID set`.
        kind: &'static str,
        /// The offending text (or the offending element of a set).
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An LSN was compared with a GTID set.
    #[error("cannot compare a {ours} position with a {theirs} position")]
    KindMismatch {
        /// Kind of `self`.
        ours: &'static str,
        /// Kind of the other.
        theirs: &'static str,
    },
}

/// A PostgreSQL write-ahead-log location, `X/Y` in hex on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Bytes of WAL between `earlier` and `self` (0 when `earlier` is ahead).
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = PositionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| PositionError::Parse {
            kind: "LSN",
            text: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (hi, lo) = s.split_once('/').ok_or_else(|| err("expected 'X/Y'"))?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(err("each half is 1 to 8 hex digits"));
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err("not hexadecimal"))?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err("not hexadecimal"))?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A MariaDB GTID position: per replication domain, the highest `server-seq` seen
/// (`0-1-100,1-2-7`). The MySQL `uuid:interval` flavour is parsed by [`GtidSet::parse_mysql`].
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct GtidSet {
    /// MariaDB: domain id -> (server id, sequence number).
    mariadb: BTreeMap<u32, (u32, u64)>,
    /// MySQL: source uuid -> sorted, disjoint, inclusive intervals.
    mysql: BTreeMap<String, Vec<(u64, u64)>>,
}

impl GtidSet {
    /// Parses a MariaDB `domain-server-seq[,…]` list; an empty string is the empty set.
    pub fn parse_mariadb(s: &str) -> Result<Self, PositionError> {
        let mut out = Self::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let err = |reason: &str| PositionError::Parse {
                kind: "GTID set",
                text: part.to_owned(),
                reason: reason.to_owned(),
            };
            let mut it = part.split('-');
            let (Some(d), Some(srv), Some(seq), None) =
                (it.next(), it.next(), it.next(), it.next())
            else {
                return Err(err("expected domain-server-sequence"));
            };
            let d: u32 = d.parse().map_err(|_| err("domain is not a number"))?;
            let srv: u32 = srv.parse().map_err(|_| err("server id is not a number"))?;
            let seq: u64 = seq.parse().map_err(|_| err("sequence is not a number"))?;
            if out.mariadb.insert(d, (srv, seq)).is_some() {
                return Err(err("domain appears twice"));
            }
        }
        Ok(out)
    }

    /// Parses a MySQL `uuid:a-b[:c-d][,uuid:…]` set; an empty string is the empty set.
    pub fn parse_mysql(s: &str) -> Result<Self, PositionError> {
        let mut out = Self::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let err = |reason: &str| PositionError::Parse {
                kind: "GTID set",
                text: part.to_owned(),
                reason: reason.to_owned(),
            };
            let mut it = part.split(':');
            let uuid = it.next().unwrap_or_default().to_ascii_lowercase();
            let hex: String = uuid.chars().filter(|c| *c != '-').collect();
            if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(err("source is not a UUID"));
            }
            let ivs = out.mysql.entry(uuid).or_default();
            let mut any = false;
            for iv in it {
                any = true;
                let (a, b) = match iv.split_once('-') {
                    Some((a, b)) => (a, b),
                    None => (iv, iv),
                };
                let a: u64 = a.parse().map_err(|_| err("interval is not a number"))?;
                let b: u64 = b.parse().map_err(|_| err("interval is not a number"))?;
                if a == 0 || b < a {
                    return Err(err("interval must be 1 <= start <= end"));
                }
                ivs.push((a, b));
            }
            if !any {
                return Err(err("no interval"));
            }
            ivs.sort_unstable();
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ivs.len());
            for &(a, b) in ivs.iter() {
                match merged.last_mut() {
                    Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                    _ => merged.push((a, b)),
                }
            }
            *ivs = merged;
        }
        Ok(out)
    }

    /// Parses either flavour, telling them apart by the presence of `:`.
    pub fn parse(s: &str) -> Result<Self, PositionError> {
        if s.contains(':') {
            Self::parse_mysql(s)
        } else {
            Self::parse_mariadb(s)
        }
    }

    /// Whether every transaction in `self` is also in `other`.
    pub fn is_subset_of(&self, other: &GtidSet) -> bool {
        let maria = self
            .mariadb
            .iter()
            .all(|(d, (_, seq))| other.mariadb.get(d).is_some_and(|(_, oseq)| oseq >= seq));
        let mysql = self.mysql.iter().all(|(uuid, ivs)| {
            let Some(oivs) = other.mysql.get(uuid) else {
                return ivs.is_empty();
            };
            ivs.iter()
                .all(|(a, b)| oivs.iter().any(|(oa, ob)| oa <= a && b <= ob))
        });
        maria && mysql
    }
}

impl fmt::Display for GtidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (d, (srv, seq)) in &self.mariadb {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{d}-{srv}-{seq}")?;
        }
        for (uuid, ivs) in &self.mysql {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            f.write_str(uuid)?;
            for (a, b) in ivs {
                if a == b {
                    write!(f, ":{a}")?
                } else {
                    write!(f, ":{a}-{b}")?
                }
            }
        }
        Ok(())
    }
}

impl Serialize for GtidSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GtidSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        GtidSet::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The latest transaction position of a datastore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Position {
    /// A PostgreSQL WAL location.
    Lsn(Lsn),
    /// A MySQL/MariaDB GTID set.
    Gtid(GtidSet),
}

impl Position {
    fn kind_name(&self) -> &'static str {
        match self {
            Self::Lsn(_) => "LSN",
            Self::Gtid(_) => "GTID",
        }
    }

    /// Whether `self` has reached (includes) `target`. Mixing kinds is an error, not `false`.
    pub fn reached(&self, target: &Position) -> Result<bool, PositionError> {
        match (self, target) {
            (Self::Lsn(a), Self::Lsn(b)) => Ok(a >= b),
            (Self::Gtid(a), Self::Gtid(b)) => Ok(b.is_subset_of(a)),
            _ => Err(PositionError::KindMismatch {
                ours: self.kind_name(),
                theirs: target.kind_name(),
            }),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lsn(l) => l.fmt(f),
            Self::Gtid(g) => g.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_roundtrip_and_order() {
        let a: Lsn = "0/16B3748".parse().unwrap();
        let b: Lsn = "1/0".parse().unwrap();
        assert_eq!(a.to_string(), "0/16B3748");
        assert_eq!(b.0, 1 << 32);
        assert!(b > a);
        assert_eq!(b.bytes_since(a), (1u64 << 32) - 0x16B3748);
        assert_eq!(a.bytes_since(b), 0);
        for bad in ["", "0", "x/1", "0/", "123456789/0", "0/1/2"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mariadb_gtid() {
        let a = GtidSet::parse("0-1-100,1-2-7").unwrap();
        let b = GtidSet::parse("0-1-90").unwrap();
        assert!(b.is_subset_of(&a));
        assert!(!a.is_subset_of(&b));
        assert_eq!(a.to_string(), "0-1-100,1-2-7");
        let e = GtidSet::parse("0-1-5,x-1-2").unwrap_err();
        assert!(e.to_string().contains("x-1-2"));
    }

    #[test]
    fn mysql_gtid() {
        let u = "3E11FA47-71CA-11E1-9E33-C80AA9429562";
        let a = GtidSet::parse(&format!("{u}:1-5:7-9")).unwrap();
        let b = GtidSet::parse(&format!("{u}:2-4,{u}:8")).unwrap();
        assert!(b.is_subset_of(&a));
        assert!(!GtidSet::parse(&format!("{u}:6")).unwrap().is_subset_of(&a));
        assert_eq!(
            GtidSet::parse(&format!("{u}:1-3:4-5")).unwrap().to_string(),
            format!("{}:1-5", u.to_ascii_lowercase())
        );
    }

    #[test]
    fn position_reached_and_mismatch() {
        let l1 = Position::Lsn("0/10".parse().unwrap());
        let l2 = Position::Lsn("0/20".parse().unwrap());
        assert!(l2.reached(&l1).unwrap());
        assert!(!l1.reached(&l2).unwrap());
        let g = Position::Gtid(GtidSet::parse("0-1-1").unwrap());
        assert!(l1.reached(&g).is_err());
        let json = serde_json::to_string(&l2).unwrap();
        assert_eq!(json, r#"{"kind":"lsn","value":"0/20"}"#);
        assert_eq!(serde_json::from_str::<Position>(&json).unwrap(), l2);
    }
}
