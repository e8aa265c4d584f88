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
            *ivs = normalise(std::mem::take(ivs));
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

    /// Whether the set holds no transaction at all.
    pub fn is_empty(&self) -> bool {
        self.mariadb.is_empty() && self.mysql.values().all(Vec::is_empty)
    }

    /// Every transaction in `self` or in `other`.
    ///
    /// MariaDB: per domain the later position (the higher sequence number; on a tie `self`'s
    /// server id is kept). MySQL: the union of the intervals per source.
    #[must_use]
    pub fn union(&self, other: &GtidSet) -> GtidSet {
        let mut out = self.clone();
        for (d, (srv, seq)) in &other.mariadb {
            match out.mariadb.get(d) {
                Some((_, ours)) if ours >= seq => {}
                _ => {
                    out.mariadb.insert(*d, (*srv, *seq));
                }
            }
        }
        for (uuid, ivs) in &other.mysql {
            let merged = out.mysql.entry(uuid.clone()).or_default();
            merged.extend_from_slice(ivs);
            *merged = normalise(std::mem::take(merged));
        }
        out
    }

    /// Whether `self` holds every transaction of `other` and at least one more: `self` is
    /// strictly ahead. Two MariaDB positions with the same sequence numbers but other server
    /// ids are not ahead of each other (they diverged).
    pub fn is_more_advanced_than(&self, other: &GtidSet) -> bool {
        other.is_subset_of(self) && !self.is_subset_of(other)
    }

    /// The transactions of `self` that `reference` does not hold.
    ///
    /// With `reference` = what a replica received from its sources (MariaDB `gtid_slave_pos`)
    /// or its primary's executed set (MySQL `gtid_executed`), the result is the replica's
    /// *errant* transactions: written on the replica itself, unknown to the primary. An empty
    /// result means none.
    ///
    /// MariaDB positions carry only the last GTID per domain, so the result names, per domain,
    /// the last GTID of `self` when it is beyond `reference`'s sequence number, or at the same
    /// number from another server (a diverged history). MySQL sets are subtracted exactly.
    #[must_use]
    pub fn errant_against(&self, reference: &GtidSet) -> GtidSet {
        let mut out = GtidSet::default();
        for (d, (srv, seq)) in &self.mariadb {
            let covered = match reference.mariadb.get(d) {
                Some((rsrv, rseq)) => rseq > seq || (rseq == seq && rsrv == srv),
                None => false,
            };
            if !covered {
                out.mariadb.insert(*d, (*srv, *seq));
            }
        }
        for (uuid, ivs) in &self.mysql {
            let rest = match reference.mysql.get(uuid) {
                Some(rivs) => subtract(ivs, rivs),
                None => ivs.clone(),
            };
            if !rest.is_empty() {
                out.mysql.insert(uuid.clone(), rest);
            }
        }
        out
    }

    /// The part of the set that originated on the server `origin`: MariaDB domains whose last
    /// GTID carries server id `origin`, or the MySQL intervals of source UUID `origin`.
    #[must_use]
    pub fn originated_by(&self, origin: &str) -> GtidSet {
        let mut out = GtidSet::default();
        if let Ok(id) = origin.trim().parse::<u32>() {
            out.mariadb = self
                .mariadb
                .iter()
                .filter(|(_, (srv, _))| *srv == id)
                .map(|(d, v)| (*d, *v))
                .collect();
        }
        let uuid = origin.trim().to_ascii_lowercase();
        if let Some(ivs) = self.mysql.get(&uuid) {
            out.mysql.insert(uuid, ivs.clone());
        }
        out
    }

    /// MariaDB entries as `(domain, server id, sequence number)`, in domain order.
    pub fn mariadb_entries(&self) -> impl Iterator<Item = (u32, u32, u64)> + '_ {
        self.mariadb.iter().map(|(d, (srv, seq))| (*d, *srv, *seq))
    }
}

/// Sorts and merges inclusive intervals (adjacent ones join: `1-3` and `4-5` make `1-5`).
fn normalise(mut ivs: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ivs.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ivs.len());
    for (a, b) in ivs {
        match merged.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

/// `ivs` minus `minus`, both sorted, disjoint and inclusive.
fn subtract(ivs: &[(u64, u64)], minus: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(a, b) in ivs {
        let mut start = Some(a);
        for &(ma, mb) in minus {
            let Some(s) = start else { break };
            if mb < s || ma > b {
                continue;
            }
            if ma > s {
                out.push((s, ma - 1));
            }
            start = mb.checked_add(1).filter(|n| *n <= b);
        }
        if let Some(s) = start {
            out.push((s, b));
        }
    }
    out
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

    /// `gtid_binlog_pos` / `gtid_slave_pos` samples as MariaDB 10.11 prints them.
    #[test]
    fn mariadb_real_world_samples() {
        let binlog = GtidSet::parse("0-101-2033,1-102-887,10-101-1").unwrap();
        assert_eq!(
            binlog.mariadb_entries().collect::<Vec<_>>(),
            [(0, 101, 2033), (1, 102, 887), (10, 101, 1)]
        );
        assert_eq!(binlog.to_string(), "0-101-2033,1-102-887,10-101-1");
        assert!(GtidSet::parse("").unwrap().is_empty());
        assert!(GtidSet::parse(" 0-1-2000 ").unwrap().is_subset_of(&binlog));
        assert!(!GtidSet::parse("0-1-3391").unwrap().is_subset_of(&binlog));

        // A replica that wrote locally under gtid_strict_mode: 0-2-8 after 0-1-7 from the source.
        let replica_binlog = GtidSet::parse("0-2-8").unwrap();
        let replica_slave = GtidSet::parse("0-1-7").unwrap();
        let errant = replica_binlog.errant_against(&replica_slave);
        assert_eq!(errant.to_string(), "0-2-8");
        assert_eq!(replica_binlog.originated_by("2").to_string(), "0-2-8");
        assert!(replica_binlog.originated_by("1").is_empty());
        // A caught-up replica has none.
        let caught_up = GtidSet::parse("0-1-7").unwrap();
        assert!(caught_up.errant_against(&replica_slave).is_empty());
        // A domain the source never sent is errant; same sequence from another server too.
        assert_eq!(
            GtidSet::parse("0-1-7,5-2-1")
                .unwrap()
                .errant_against(&replica_slave)
                .to_string(),
            "5-2-1"
        );
        assert_eq!(
            GtidSet::parse("0-3-7")
                .unwrap()
                .errant_against(&replica_slave)
                .to_string(),
            "0-3-7"
        );
    }

    #[test]
    fn mariadb_union_and_advance() {
        let a = GtidSet::parse("0-1-100,1-2-7").unwrap();
        let b = GtidSet::parse("0-3-120,2-1-1").unwrap();
        assert_eq!(a.union(&b).to_string(), "0-3-120,1-2-7,2-1-1");
        assert_eq!(a.union(&a), a);
        let behind = GtidSet::parse("0-1-99,1-2-7").unwrap();
        assert!(a.is_more_advanced_than(&behind));
        assert!(!behind.is_more_advanced_than(&a));
        assert!(!a.is_more_advanced_than(&a));
        // Neither contains the other: not comparable.
        assert!(!a.is_more_advanced_than(&b) && !b.is_more_advanced_than(&a));
        // Same sequence, other server: diverged, neither is ahead.
        let x = GtidSet::parse("0-1-5").unwrap();
        let y = GtidSet::parse("0-2-5").unwrap();
        assert!(!x.is_more_advanced_than(&y) && !y.is_more_advanced_than(&x));
        assert!(GtidSet::default().is_empty());
        assert!(x.is_more_advanced_than(&GtidSet::default()));
    }

    /// `gtid_executed` as MySQL 8 prints it: upper-case UUIDs, several intervals, a newline
    /// after each comma.
    #[test]
    fn mysql_real_world_samples() {
        let text = "2174B383-5441-11E8-B90A-C80AA9429562:1-3,\n\
                    24DA167F-C2E1-11E8-8FCE-080027BFF8A1:1-19:21-30:47";
        let s = GtidSet::parse(text).unwrap();
        assert_eq!(
            s.to_string(),
            "2174b383-5441-11e8-b90a-c80aa9429562:1-3,\
             24da167f-c2e1-11e8-8fce-080027bff8a1:1-19:21-30:47"
        );
        let primary = GtidSet::parse(
            "2174B383-5441-11E8-B90A-C80AA9429562:1-3,24DA167F-C2E1-11E8-8FCE-080027BFF8A1:1-40",
        )
        .unwrap();
        // The replica holds 47 that the primary lacks, and 21-30 which it has.
        assert_eq!(
            s.errant_against(&primary).to_string(),
            "24da167f-c2e1-11e8-8fce-080027bff8a1:47"
        );
        assert!(primary.errant_against(&primary).is_empty());
        let u = s.union(&primary);
        assert_eq!(
            u.to_string(),
            "2174b383-5441-11e8-b90a-c80aa9429562:1-3,\
             24da167f-c2e1-11e8-8fce-080027bff8a1:1-40:47"
        );
        assert!(u.is_more_advanced_than(&primary) && u.is_more_advanced_than(&s));
        assert!(!s.is_more_advanced_than(&primary) && !primary.is_more_advanced_than(&s));
        assert_eq!(
            u.originated_by("2174b383-5441-11e8-b90a-c80aa9429562")
                .to_string(),
            "2174b383-5441-11e8-b90a-c80aa9429562:1-3"
        );
    }

    #[test]
    fn mysql_subtraction_edges() {
        let u = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let set = |t: &str| GtidSet::parse(&format!("{u}:{t}")).unwrap();
        assert_eq!(
            set("1-10").errant_against(&set("3-5")).to_string(),
            format!("{u}:1-2:6-10")
        );
        assert!(set("1-10").errant_against(&set("1-10")).is_empty());
        assert_eq!(
            set("1-10:20-30").errant_against(&set("5-25")).to_string(),
            format!("{u}:1-4:26-30")
        );
        assert_eq!(
            set("18446744073709551614-18446744073709551615")
                .errant_against(&set("18446744073709551615"))
                .to_string(),
            format!("{u}:18446744073709551614")
        );
    }

    #[test]
    fn bad_strings_name_the_offending_element() {
        let u = "3E11FA47-71CA-11E1-9E33-C80AA9429562";
        for (text, element, reason) in [
            ("0-1-5,0-x-2", "0-x-2", "server id"),
            ("0-1-5,0-2-6", "0-2-6", "twice"),
            ("0-1", "0-1", "domain-server-sequence"),
            ("0-1-2-3", "0-1-2-3", "domain-server-sequence"),
            ("a-1-2", "a-1-2", "domain"),
            (
                "0-1-99999999999999999999",
                "0-1-99999999999999999999",
                "sequence",
            ),
        ] {
            let e = GtidSet::parse(text).unwrap_err().to_string();
            assert!(e.contains(&format!("'{element}'")), "{text}: {e}");
            assert!(e.contains(reason), "{text}: {e}");
        }
        let bad_uuid = "3E11FA47-71CA-11E1-9E33:1-5";
        let e = GtidSet::parse(&format!("{u}:1-5,{bad_uuid}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(bad_uuid) && e.contains("UUID"), "{e}");
        for (iv, reason) in [("0", "start"), ("5-3", "start"), ("x", "number")] {
            let e = GtidSet::parse(&format!("{u}:{iv}"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("{u}:{iv}")) && e.contains(reason),
                "{e}"
            );
        }
        let e = GtidSet::parse(&format!("{u}:1,{u}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no interval"), "{e}");
    }
}
