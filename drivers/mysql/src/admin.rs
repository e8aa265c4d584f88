//! Administration with Trove's MySQL semantics: databases with character set and collation,
//! host-scoped accounts (`'app'@'%'`), database-level grants and the remote `root@'%'`.
//!
//! Accounts are read from `mysql.user` and grants from `mysql.db` (the same tables on both
//! flavours; MariaDB's roles are filtered out). A grant names its database with `_` and `%`
//! escaped ([`grant_target`]), so granting `app_db` does not open `appXdb` too.
//!
//! Names reach SQL only through [`quote_ident`] (via [`account`] and [`grant_target`]);
//! catalog queries bind their values; passwords travel as [`quote_string`] literals in
//! statements whose errors never quote the server's message.

use std::collections::BTreeMap;

use async_trait::async_trait;
use guest_agent_api::admin::{
    Admin, DatabaseSpec, Page, PageRequest, PasswordChange, RootCredentials, UserInfo, UserRef,
    UserSpec, UserUpdate,
};
use guest_agent_api::ident::{DbName, HostPattern, Password, UserName};
use guest_agent_api::{Error, OpContext, Result};
use mysql_async::prelude::Queryable;

use crate::error::{Subject, stmt};
use crate::sql::{
    Session, account, grant_pattern_to_name, grant_target, quote_ident, quote_string,
};
use crate::{MySqlDriver, ROOT_USER};

/// Length of generated root passwords.
const ROOT_PASSWORD_LEN: usize = 32;

/// The host of Trove's remote root account.
const ROOT_HOST: &str = "%";

fn reserved_user(name: &str) -> Error {
    Error::invalid("user name", format!("'{name}' is reserved"))
}

fn reserved_db(name: &str) -> Error {
    Error::invalid("database name", format!("'{name}' is reserved"))
}

/// `user@host`, the name used in errors and as the pagination key.
fn key(user: &str, host: &str) -> String {
    format!("{user}@{host}")
}

impl MySqlDriver {
    fn check_user(&self, name: &UserName) -> Result<()> {
        if self.is_hidden_user(name.as_str()) {
            return Err(reserved_user(name.as_str()));
        }
        Ok(())
    }

    fn check_db(&self, name: &DbName) -> Result<()> {
        if self.is_hidden_db(name.as_str()) {
            return Err(reserved_db(name.as_str()));
        }
        Ok(())
    }

    /// The `mysql.user` filter that leaves MariaDB's roles out.
    fn accounts_filter(s: &Session) -> &'static str {
        if s.server.is_mariadb() {
            "is_role = 'N'"
        } else {
            "1 = 1"
        }
    }

    /// Fails with [`Error::NotFound`] unless the (visible) account exists.
    async fn require_user(&self, s: &mut Session, user: &UserRef) -> Result<()> {
        let (u, h) = (user.name.as_str(), user.host.as_str());
        if self.is_hidden_user(u) || !s.account_exists(u, h).await? {
            return Err(Error::NotFound {
                what: "user",
                name: key(u, h),
            });
        }
        Ok(())
    }

    /// Visible accounts with the visible databases they have grants on; `only` restricts to
    /// one account.
    async fn accounts(
        &self,
        s: &mut Session,
        only: Option<(&str, &str)>,
    ) -> Result<BTreeMap<(String, String), Vec<String>>> {
        let filter = Self::accounts_filter(s);
        let (u, h) = only.unwrap_or_default();
        let rows: Vec<(String, String, Option<String>)> = s
            .conn
            .exec(
                format!(
                    "SELECT u.User, u.Host, d.Db FROM mysql.user u \
                     LEFT JOIN mysql.db d ON d.User = u.User AND d.Host = u.Host \
                     WHERE {filter} AND (? = 0 OR (u.User = ? AND u.Host = ?))"
                ),
                (i32::from(only.is_some()), u, h),
            )
            .await
            .map_err(stmt(None))?;
        let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for (user, host, db) in rows {
            if self.is_hidden_user(&user) {
                continue;
            }
            let dbs = out.entry((user, host)).or_default();
            if let Some(db) = db
                .as_deref()
                .and_then(grant_pattern_to_name)
                .filter(|d| !self.is_hidden_db(d))
            {
                dbs.push(db);
            }
        }
        for dbs in out.values_mut() {
            dbs.sort();
            dbs.dedup();
        }
        Ok(out)
    }

    /// A [`UserInfo`]; `None` for names the API types cannot carry (accounts made outside
    /// Trove).
    fn user_info(user: &str, host: &str, dbs: &[String]) -> Option<UserInfo> {
        let name = UserName::new(user).ok()?;
        let host = HostPattern::new(host).ok()?;
        let databases = dbs
            .iter()
            .filter_map(|d| DbName::new(d.as_str()).ok())
            .map(DatabaseSpec::named)
            .collect();
        Some(UserInfo {
            name,
            host,
            databases,
        })
    }

    /// Ends the sessions of an account (only those using `db`, when given), so that a revoked
    /// or dropped account loses what it has open, not only what it would open next.
    async fn kill_sessions(&self, s: &mut Session, user: &str, db: Option<&str>) -> Result<()> {
        let ids: Vec<u64> = s
            .conn
            .exec(
                "SELECT ID FROM information_schema.PROCESSLIST \
                 WHERE USER = ? AND (? IS NULL OR DB = ?) AND ID <> CONNECTION_ID()",
                (user, db, db),
            )
            .await
            .map_err(stmt(None))?;
        for id in ids {
            // The session may have ended meanwhile (errno 1094, unknown thread).
            match s.exec(&format!("KILL CONNECTION {id}"), None).await {
                Ok(()) | Err(Error::Datastore { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn grant_one(&self, s: &mut Session, user: &UserRef, db: &str) -> Result<()> {
        s.exec(
            &format!(
                "GRANT ALL PRIVILEGES ON {} TO {}",
                grant_target(db)?,
                account(user.name.as_str(), user.host.as_str())?
            ),
            Some(Subject::database(db)),
        )
        .await
    }

    async fn set_password(
        &self,
        s: &mut Session,
        user: &str,
        host: &str,
        pw: &Password,
    ) -> Result<()> {
        let name = key(user, host);
        s.exec(
            &format!(
                "ALTER USER {} IDENTIFIED BY {}",
                account(user, host)?,
                quote_string(pw.expose())?
            ),
            Some(Subject::user(&name).with_secret()),
        )
        .await
    }
}

#[async_trait]
impl Admin for MySqlDriver {
    async fn list_databases(
        &self,
        ctx: &OpContext,
        page: &PageRequest,
    ) -> Result<Page<DatabaseSpec>> {
        ctx.cancelled()?;
        let mut s = self.connector.connect().await?;
        let rows: Vec<(String, String, String)> = s
            .conn
            .query(
                "SELECT SCHEMA_NAME, DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME \
                 FROM information_schema.SCHEMATA",
            )
            .await
            .map_err(stmt(None))?;
        s.close().await;
        let mut dbs = Vec::with_capacity(rows.len());
        for (name, charset, collate) in rows {
            if self.is_hidden_db(&name) {
                continue;
            }
            // Databases made outside Trove may carry names the API cannot represent.
            let Ok(name) = DbName::new(name) else {
                continue;
            };
            let spec = DatabaseSpec::new(name.clone(), Some(charset), Some(collate))
                .unwrap_or_else(|_| DatabaseSpec::named(name));
            dbs.push(spec);
        }
        dbs.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        Ok(Page::from_sorted(dbs, |d| d.name.to_string(), page))
    }

    async fn create_databases(&self, ctx: &OpContext, dbs: &[DatabaseSpec]) -> Result<()> {
        for db in dbs {
            self.check_db(&db.name)?;
        }
        let mut s = self.connector.connect().await?;
        for db in dbs {
            ctx.cancelled()?;
            let name = db.name.as_str();
            let mut sql = format!("CREATE DATABASE IF NOT EXISTS {}", quote_ident(name)?);
            if let Some(cs) = &db.character_set {
                sql.push_str(&format!(" CHARACTER SET {}", quote_ident(cs)?));
            }
            if let Some(co) = &db.collate {
                sql.push_str(&format!(" COLLATE {}", quote_ident(co)?));
            }
            s.exec(&sql, Some(Subject::database(name))).await?;
            tracing::info!(database = name, "Database created.");
        }
        s.close().await;
        Ok(())
    }

    async fn drop_database(&self, ctx: &OpContext, name: &DbName) -> Result<()> {
        ctx.cancelled()?;
        self.check_db(name)?;
        let mut s = self.connector.connect().await?;
        s.exec(
            &format!("DROP DATABASE IF EXISTS {}", quote_ident(name.as_str())?),
            Some(Subject::database(name.as_str())),
        )
        .await?;
        s.close().await;
        Ok(())
    }

    async fn create_users(&self, ctx: &OpContext, users: &[UserSpec]) -> Result<()> {
        for u in users {
            self.check_user(&u.name)?;
            for db in &u.databases {
                self.check_db(db)?;
            }
        }
        let mut s = self.connector.connect().await?;
        for u in users {
            ctx.cancelled()?;
            let (name, host) = (u.name.as_str(), u.host.as_str());
            let who = key(name, host);
            if s.account_exists(name, host).await? {
                return Err(Error::AlreadyExists {
                    what: "user",
                    name: who,
                });
            }
            for db in &u.databases {
                if !s.database_exists(db.as_str()).await? {
                    return Err(Error::NotFound {
                        what: "database",
                        name: db.to_string(),
                    });
                }
            }
            s.exec(
                &format!(
                    "CREATE USER {} IDENTIFIED BY {}",
                    account(name, host)?,
                    quote_string(u.password.expose())?
                ),
                Some(Subject::new_user(&who).with_secret()),
            )
            .await?;
            let r = UserRef {
                name: u.name.clone(),
                host: u.host.clone(),
            };
            for db in &u.databases {
                self.grant_one(&mut s, &r, db.as_str()).await?;
            }
            tracing::info!(user = name, host, "User created.");
        }
        s.close().await;
        Ok(())
    }

    async fn get_user(&self, ctx: &OpContext, user: &UserRef) -> Result<Option<UserInfo>> {
        ctx.cancelled()?;
        let (u, h) = (user.name.as_str(), user.host.as_str());
        if self.is_hidden_user(u) {
            return Ok(None);
        }
        let mut s = self.connector.connect().await?;
        let accounts = self.accounts(&mut s, Some((u, h))).await?;
        s.close().await;
        Ok(accounts
            .get(&(u.to_owned(), h.to_owned()))
            .and_then(|dbs| Self::user_info(u, h, dbs)))
    }

    async fn list_users(&self, ctx: &OpContext, page: &PageRequest) -> Result<Page<UserInfo>> {
        ctx.cancelled()?;
        let mut s = self.connector.connect().await?;
        let accounts = self.accounts(&mut s, None).await?;
        s.close().await;
        let mut users: Vec<UserInfo> = accounts
            .iter()
            .filter_map(|((u, h), dbs)| Self::user_info(u, h, dbs))
            .collect();
        // Trove's marker for users is `name@host`; pages are cut in that order.
        users.sort_by_key(|u| key(u.name.as_str(), u.host.as_str()));
        Ok(Page::from_sorted(
            users,
            |u| key(u.name.as_str(), u.host.as_str()),
            page,
        ))
    }

    async fn drop_user(&self, ctx: &OpContext, user: &UserRef) -> Result<()> {
        ctx.cancelled()?;
        self.check_user(&user.name)?;
        let (u, h) = (user.name.as_str(), user.host.as_str());
        let mut s = self.connector.connect().await?;
        let who = key(u, h);
        s.exec(
            &format!("DROP USER IF EXISTS {}", account(u, h)?),
            Some(Subject::user(&who)),
        )
        .await?;
        // Only when no account of that name is left may its sessions go.
        let others: Option<u8> = s
            .conn
            .exec_first("SELECT 1 FROM mysql.user WHERE User = ?", (u,))
            .await
            .map_err(stmt(None))?;
        if others.is_none() {
            self.kill_sessions(&mut s, u, None).await?;
        }
        s.close().await;
        Ok(())
    }

    async fn change_passwords(&self, ctx: &OpContext, changes: &[PasswordChange]) -> Result<()> {
        for c in changes {
            self.check_user(&c.user.name)?;
        }
        let mut s = self.connector.connect().await?;
        for c in changes {
            ctx.cancelled()?;
            self.require_user(&mut s, &c.user).await?;
            self.set_password(
                &mut s,
                c.user.name.as_str(),
                c.user.host.as_str(),
                &c.password,
            )
            .await?;
        }
        s.close().await;
        Ok(())
    }

    async fn update_attributes(
        &self,
        ctx: &OpContext,
        user: &UserRef,
        update: &UserUpdate,
    ) -> Result<()> {
        ctx.cancelled()?;
        self.check_user(&user.name)?;
        if let Some(n) = &update.name {
            self.check_user(n)?;
        }
        let mut s = self.connector.connect().await?;
        self.require_user(&mut s, user).await?;
        let new_name = update.name.as_ref().unwrap_or(&user.name);
        let new_host = update.host.as_ref().unwrap_or(&user.host);
        let (old_u, old_h) = (user.name.as_str(), user.host.as_str());
        let (new_u, new_h) = (new_name.as_str(), new_host.as_str());
        if (new_u, new_h) != (old_u, old_h) {
            if s.account_exists(new_u, new_h).await? {
                return Err(Error::AlreadyExists {
                    what: "user",
                    name: key(new_u, new_h),
                });
            }
            // RENAME USER moves the account's grants with it.
            let who = key(old_u, old_h);
            s.exec(
                &format!(
                    "RENAME USER {} TO {}",
                    account(old_u, old_h)?,
                    account(new_u, new_h)?
                ),
                Some(Subject::user(&who)),
            )
            .await?;
            tracing::info!(from = %who, to = %key(new_u, new_h), "User renamed.");
        }
        if let Some(pw) = &update.password {
            self.set_password(&mut s, new_u, new_h, pw).await?;
        }
        s.close().await;
        Ok(())
    }

    async fn grant_access(&self, ctx: &OpContext, user: &UserRef, dbs: &[DbName]) -> Result<()> {
        ctx.cancelled()?;
        self.check_user(&user.name)?;
        for db in dbs {
            self.check_db(db)?;
        }
        let mut s = self.connector.connect().await?;
        self.require_user(&mut s, user).await?;
        for db in dbs {
            if !s.database_exists(db.as_str()).await? {
                return Err(Error::NotFound {
                    what: "database",
                    name: db.to_string(),
                });
            }
        }
        for db in dbs {
            self.grant_one(&mut s, user, db.as_str()).await?;
        }
        s.close().await;
        Ok(())
    }

    async fn revoke_access(&self, ctx: &OpContext, user: &UserRef, db: &DbName) -> Result<()> {
        ctx.cancelled()?;
        self.check_user(&user.name)?;
        self.check_db(db)?;
        let (u, h) = (user.name.as_str(), user.host.as_str());
        let mut s = self.connector.connect().await?;
        let who = key(u, h);
        match s
            .exec(
                &format!(
                    "REVOKE ALL PRIVILEGES ON {} FROM {}",
                    grant_target(db.as_str())?,
                    account(u, h)?
                ),
                Some(Subject::user(&who)),
            )
            .await
        {
            // No such grant (or no such account): nothing to revoke.
            Ok(()) | Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        self.kill_sessions(&mut s, u, Some(db.as_str())).await?;
        s.close().await;
        Ok(())
    }

    async fn list_access(&self, ctx: &OpContext, user: &UserRef) -> Result<Vec<DatabaseSpec>> {
        ctx.cancelled()?;
        self.check_user(&user.name)?;
        let (u, h) = (user.name.as_str(), user.host.as_str());
        let mut s = self.connector.connect().await?;
        self.require_user(&mut s, user).await?;
        let accounts = self.accounts(&mut s, Some((u, h))).await?;
        s.close().await;
        Ok(accounts
            .get(&(u.to_owned(), h.to_owned()))
            .map(|dbs| {
                dbs.iter()
                    .filter_map(|d| DbName::new(d.as_str()).ok())
                    .map(DatabaseSpec::named)
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn enable_root(
        &self,
        ctx: &OpContext,
        password: Option<Password>,
    ) -> Result<RootCredentials> {
        ctx.cancelled()?;
        let password = match password {
            Some(p) => p,
            None => Password::generate(ROOT_PASSWORD_LEN)?,
        };
        let mut s = self.connector.connect().await?;
        let who = key(ROOT_USER, ROOT_HOST);
        let root = account(ROOT_USER, ROOT_HOST)?;
        let pw = quote_string(password.expose())?;
        if s.account_exists(ROOT_USER, ROOT_HOST).await? {
            self.set_password(&mut s, ROOT_USER, ROOT_HOST, &password)
                .await?;
        } else {
            s.exec(
                &format!("CREATE USER {root} IDENTIFIED BY {pw}"),
                Some(Subject::new_user(&who).with_secret()),
            )
            .await?;
        }
        s.exec(
            &format!("GRANT ALL PRIVILEGES ON *.* TO {root} WITH GRANT OPTION"),
            Some(Subject::user(&who)),
        )
        .await?;
        s.close().await;
        tracing::info!("Remote root enabled.");
        Ok(RootCredentials {
            name: UserName::new(ROOT_USER)?,
            password,
        })
    }

    async fn disable_root(&self, ctx: &OpContext) -> Result<()> {
        ctx.cancelled()?;
        let mut s = self.connector.connect().await?;
        let hosts: Vec<String> = s
            .conn
            .exec(
                "SELECT Host FROM mysql.user WHERE User = ? AND Host <> ?",
                (ROOT_USER, "localhost"),
            )
            .await
            .map_err(stmt(None))?;
        for host in hosts {
            let who = key(ROOT_USER, &host);
            s.exec(
                &format!("DROP USER IF EXISTS {}", account(ROOT_USER, &host)?),
                Some(Subject::user(&who)),
            )
            .await?;
        }
        // Open remote root sessions end with the accounts; the local socket account stays.
        let ids: Vec<u64> = s
            .conn
            .exec(
                "SELECT ID FROM information_schema.PROCESSLIST \
                 WHERE USER = ? AND HOST NOT LIKE 'localhost%' AND ID <> CONNECTION_ID()",
                (ROOT_USER,),
            )
            .await
            .map_err(stmt(None))?;
        for id in ids {
            match s.exec(&format!("KILL CONNECTION {id}"), None).await {
                Ok(()) | Err(Error::Datastore { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        s.close().await;
        tracing::info!("Remote root disabled.");
        Ok(())
    }

    async fn is_root_enabled(&self, ctx: &OpContext) -> Result<bool> {
        ctx.cancelled()?;
        let mut s = self.connector.connect().await?;
        let row: Option<u8> = s
            .conn
            .exec_first(
                "SELECT 1 FROM mysql.user WHERE User = ? AND Host <> ?",
                (ROOT_USER, "localhost"),
            )
            .await
            .map_err(stmt(None))?;
        s.close().await;
        Ok(row.is_some())
    }
}
