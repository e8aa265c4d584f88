//! The transaction position of the server as a WAL location.
//!
//! On a primary this is `pg_current_wal_insert_lsn()`: the insert position includes the
//! record just committed, whereas `pg_current_wal_lsn()` is the *write* position and can lag
//! behind it (a replica that has reached the write position may still miss that commit). In
//! recovery it is `pg_last_wal_replay_lsn()`, what the replica has applied.

use guest_agent_api::position::{Lsn, Position};
use guest_agent_api::{Error, Result};

/// The position query: the insert LSN on a primary, the replay LSN in recovery, as text.
pub(crate) const POSITION_SQL: &str = "SELECT CASE WHEN pg_is_in_recovery() \
     THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END::text";

/// Parses the server's `X/Y` text into a [`Position::Lsn`].
pub(crate) fn parse_position(text: Option<&str>) -> Result<Position> {
    let text = text.ok_or_else(|| Error::Unavailable {
        message: "the server has not replayed any WAL yet".to_owned(),
        source: None,
    })?;
    let lsn: Lsn = text
        .parse()
        .map_err(|e| Error::Internal(format!("the server's WAL position: {e}")))?;
    Ok(Position::Lsn(lsn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_lsn_text() {
        let p = parse_position(Some("0/16B3748")).unwrap();
        assert_eq!(p, Position::Lsn(Lsn(0x16B_3748)));
        assert_eq!(p.to_string(), "0/16B3748");
        assert!(parse_position(Some("garbage")).is_err());
        assert!(parse_position(None).unwrap_err().is_retryable());
        assert!(POSITION_SQL.contains("pg_current_wal_insert_lsn"));
        assert!(!POSITION_SQL.contains("pg_current_wal_lsn()"));
    }
}
