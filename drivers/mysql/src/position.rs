//! The server's transaction position as a GTID set.
//!
//! MariaDB: `@@gtid_binlog_pos`, the last GTID per replication domain in the binary log. Every
//! server logs replicated transactions too (`log_slave_updates`), so on a replica it covers
//! what was applied from the source as well as anything written locally. What a replica
//! received from its source is `@@gtid_slave_pos`; the difference is its errant transactions.
//! MySQL: `@@gtid_executed`, the exact set; a replica's errant transactions are the ones that
//! carry its own `@@server_uuid`.

use guest_agent_api::position::GtidSet;
use guest_agent_api::{Error, Result};

use crate::sql::Session;

/// Parses a GTID set the server printed (either flavour, empty = nothing yet).
pub(crate) fn parse_gtid(what: &str, text: Option<&str>) -> Result<GtidSet> {
    GtidSet::parse(text.unwrap_or_default().trim())
        .map_err(|e| Error::Internal(format!("the server's {what}: {e}")))
}

/// Everything the server has applied.
pub(crate) async fn applied(s: &mut Session) -> Result<GtidSet> {
    let sql = s.server.position_sql();
    let text = s.global(sql).await?;
    parse_gtid("executed GTID set", text.as_deref())
}

/// What a MariaDB replica received from its sources.
pub(crate) async fn slave_pos(s: &mut Session) -> Result<GtidSet> {
    let text = s.global("SELECT @@GLOBAL.gtid_slave_pos").await?;
    parse_gtid("gtid_slave_pos", text.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_text() {
        assert!(parse_gtid("x", None).unwrap().is_empty());
        assert_eq!(
            parse_gtid("x", Some("0-1-5\n")).unwrap().to_string(),
            "0-1-5"
        );
        let e = parse_gtid("executed GTID set", Some("0-1-x")).unwrap_err();
        assert!(e.to_string().contains("executed GTID set") && e.to_string().contains("0-1-x"));
    }
}
