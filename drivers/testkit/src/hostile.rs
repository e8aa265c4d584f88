//! The shared corpus of hostile input, and the kit function that feeds it to the driver.
//!
//! Two walls stand between a hostile value and SQL: validation in the identifier types
//! (`DbName`, `UserName`, `HostPattern`, `Password`) and quoting or binding in the driver.
//! [`hostile_identifiers_rejected`] checks the first wall on every type, then aims values the
//! types accept (passwords, pagination markers, character sets) at the second, and finally
//! checks through the probe that a canary database survived.

use guest_agent_api::admin::{DatabaseSpec, PageRequest, PasswordChange};
use guest_agent_api::ident::{DbName, HostPattern, Password, UserName};
use guest_agent_api::{Error, Result};

use crate::Harness;
use crate::check::{
    any_host, assert_kind, caps, create_user, fresh_db, list_databases, ok, user_ref, within,
};

/// Names no identifier type may accept: SQL metacharacters, comment starters, control and
/// non-ASCII characters, empty and overlong values, and a classic injection.
pub fn identifier_corpus() -> Vec<String> {
    let mut v: Vec<String> = [
        "",
        "'",
        "\"",
        "`",
        ";",
        "--",
        "\\",
        " ",
        "\0",
        "a'b",
        "a\"b",
        "a`b",
        "a;b",
        "a--b",
        "a\\b",
        "a b",
        "a\0b",
        "a\nb",
        "a\tb",
        " a",
        "a ",
        "é",
        "datenbänk",
        "名前",
        "a\u{200b}b",
        "a\u{202e}b",
        "/*x*/",
        "a/*b",
        "a'; DROP DATABASE postgres; --",
        "x\"; DROP TABLE users; --",
        "x`; DROP DATABASE mysql; #",
        "$$x$$",
        "a%",
        "a.b",
        "a@b",
        "-x",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    v.push("a".repeat(64));
    v.push("a".repeat(300));
    v.push(format!("{}'", "a".repeat(62)));
    v
}

/// Host patterns no [`HostPattern`] may accept.
pub fn host_corpus() -> Vec<String> {
    let mut v: Vec<String> = [
        "",
        "'",
        "\"",
        "`",
        ";",
        "--",
        "\\",
        " ",
        "\0",
        "a'b",
        "a b",
        "h--",
        "10.0.0.%'",
        "localhost; DROP USER root",
        "%' OR '1'='1",
        "ホスト",
        "a\nb",
        "a'; DROP DATABASE postgres; --",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    v.push("h".repeat(300));
    v
}

/// Passwords no [`Password`] may accept: empty, control characters, overlong.
pub fn password_corpus() -> Vec<String> {
    let mut v: Vec<String> = [
        "", "\0", "a\0b", "a\nb", "a\rb", "a\tb", "a\u{1b}b", "a\u{7f}b",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    v.push("p".repeat(257));
    v.push("p".repeat(300));
    v
}

/// Passwords [`Password`] accepts although they are hostile to careless quoting; a driver
/// must store them so that exactly this text logs in.
pub fn tricky_passwords() -> Vec<&'static str> {
    vec![
        "it's",
        "say \"hi\"",
        "back\\slash\\",
        "semi;colon -- comment",
        "$$dollar$$",
        "$tag$ x $tag$",
        "`tick`",
        "'); DROP DATABASE postgres; --",
        "%_wild*?",
        "ünï©ødé ☃",
        "  spaces  ",
        "/* not a comment */",
    ]
}

/// Pagination markers aimed at drivers that compose the marker into SQL.
pub fn marker_corpus() -> Vec<String> {
    let mut v = identifier_corpus();
    v.retain(|s| !s.is_empty());
    v
}

fn expect_invalid<T: std::fmt::Debug>(what: &str, input: &str, r: Result<T>) {
    match r {
        Err(Error::InvalidArgument { .. }) => {}
        other => panic!("{what}({input:?}) must fail with InvalidArgument, got {other:?}"),
    }
}

/// Asserts the first wall: every corpus value is rejected by every identifier type.
pub fn assert_types_reject_corpus() {
    for s in identifier_corpus() {
        expect_invalid("DbName::new", &s, DbName::new(s.clone()));
        expect_invalid("UserName::new", &s, UserName::new(s.clone()));
        expect_invalid("DbName::try_from", &s, DbName::try_from(s.as_str()));
        expect_invalid("UserName::try_from", &s, UserName::try_from(s.as_str()));
    }
    for s in host_corpus() {
        expect_invalid("HostPattern::new", &s, HostPattern::new(s.clone()));
    }
    for s in password_corpus() {
        expect_invalid("Password::new", &s, Password::new(s.clone()));
    }
    for (field, bad) in [
        ("character_set", "utf8'; DROP"),
        ("character_set", ""),
        ("collate", "C\" --"),
        ("collate", "en US"),
    ] {
        let name = DbName::new("kit_charset").expect("valid");
        let (cs, co) = if field == "character_set" {
            (Some(bad.to_owned()), None)
        } else {
            (None, Some(bad.to_owned()))
        };
        expect_invalid("DatabaseSpec::new", bad, DatabaseSpec::new(name, cs, co));
    }
}

/// Hostile identifiers are rejected before the driver sees them; hostile values that pass
/// validation (markers, passwords) do no harm; a canary database survives it all.
pub async fn hostile_identifiers_rejected(h: &Harness) {
    let canary = if caps(h).databases {
        Some(fresh_db(h).await)
    } else {
        None
    };

    assert_types_reject_corpus();

    let a = h.driver.admin();
    for marker in marker_corpus() {
        let req = PageRequest {
            limit: Some(3),
            marker: Some(marker.clone()),
            include_marker: true,
        };
        if caps(h).databases {
            let ctx = h.ctx("list_databases");
            let r = within("list_databases", a.list_databases(&ctx, &req)).await;
            if let Err(e) = r {
                assert_kind(
                    &format!("list_databases with marker {marker:?}"),
                    "InvalidArgument",
                    Err::<(), _>(e),
                );
            }
        }
        if caps(h).users {
            let ctx = h.ctx("list_users");
            let r = within("list_users", a.list_users(&ctx, &req)).await;
            if let Err(e) = r {
                assert_kind(
                    &format!("list_users with marker {marker:?}"),
                    "InvalidArgument",
                    Err::<(), _>(e),
                );
            }
        }
    }

    if caps(h).users {
        for text in tricky_passwords() {
            let pw = Password::new(text).expect("tricky passwords are valid");
            let user = h.names.user_name();
            create_user(h, &user, &pw, &[]).await;
            assert!(
                h.probe.can_login(user.as_str(), pw.expose(), None).await,
                "password {text:?} was not stored verbatim"
            );
            // The same text through change_passwords, reversed so it differs.
            let reversed: String = text.chars().rev().collect();
            let pw2 = Password::new(reversed.as_str()).expect("valid");
            let ctx = h.ctx("change_passwords");
            let change = PasswordChange {
                user: user_ref(&user),
                password: pw2.clone(),
            };
            ok(
                "change_passwords",
                within("change_passwords", a.change_passwords(&ctx, &[change])).await,
            );
            assert!(
                h.probe.can_login(user.as_str(), pw2.expose(), None).await,
                "password {reversed:?} set by change_passwords was not stored verbatim"
            );
            let ctx = h.ctx("drop_user");
            ok(
                "drop_user",
                within("drop_user", a.drop_user(&ctx, &user_ref(&user))).await,
            );
            assert!(
                !h.probe
                    .user_exists(user.as_str(), any_host().as_str())
                    .await
            );
        }
    }

    if let Some(canary) = canary {
        assert!(
            h.probe.database_exists(canary.as_str()).await,
            "the canary database {canary} is gone after the hostile corpus"
        );
        let listed = list_databases(h, &PageRequest::default()).await;
        assert!(listed.items.iter().any(|d| d.name == canary));
    }
    assert!(
        h.probe.write_something().await.is_ok(),
        "the server no longer takes writes after the hostile corpus"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_is_rejected_by_the_api_types() {
        assert_types_reject_corpus();
    }

    #[test]
    fn corpus_covers_the_required_shapes() {
        let c = identifier_corpus();
        for needle in ["'", "\"", "`", ";", "--", "\0", " ", "\\"] {
            assert!(c.iter().any(|s| s.contains(needle)), "{needle:?} missing");
        }
        assert!(c.iter().any(String::is_empty));
        assert!(c.iter().any(|s| !s.is_ascii()));
        assert!(c.iter().any(|s| s.len() == 64));
        assert!(c.iter().any(|s| s.len() >= 300));
        assert!(c.contains(&"a'; DROP DATABASE postgres; --".to_owned()));
    }

    #[test]
    fn tricky_passwords_are_valid() {
        for p in tricky_passwords() {
            assert_eq!(Password::new(p).unwrap().expose(), p);
        }
    }
}
