//! Administration with Trove's semantics: databases, users (LOGIN roles), per-database access
//! and the `root` superuser.
//!
//! Access is grant-controlled: every database the driver creates has `CONNECT` and `TEMPORARY`
//! revoked from `PUBLIC`, and `grant_access` gives a user all privileges on the database plus
//! on its `public` schema (PostgreSQL 15 no longer lets everyone create there). Hosts mean
//! nothing to PostgreSQL: they are ignored and reported as `%`.
//!
//! Names reach SQL only through [`quote_ident`]; catalog queries bind their values; passwords
//! travel as SCRAM verifiers ([`password_literal`]).

use std::collections::BTreeMap;

use async_trait::async_trait;
use guest_agent_api::admin::{
    Admin, DatabaseSpec, Page, PageRequest, PasswordChange, RootCredentials, UserInfo, UserRef,
    UserSpec, UserUpdate,
};
use guest_agent_api::ident::{DbName, HostPattern, Password, UserName};
use guest_agent_api::{Error, OpContext, Result};
use tokio_postgres::Client;

use crate::error::{Subject, stmt};
use crate::sql::{password_literal, quote_ident, quote_literal};
use crate::{ADMIN_USER, PgDriver, ROOT_USER};

/// Length of generated root passwords.
const ROOT_PASSWORD_LEN: usize = 32;

/// Databases and the roles that can connect to them: every role with the databases it has
/// `CONNECT` on (templates excluded), one row per pair, `NULL` for a role with none.
const ROLE_ACCESS_SQL: &str = "SELECT r.rolname::text, d.datname::text \
     FROM pg_roles r \
     LEFT JOIN pg_database d \
       ON NOT d.datistemplate AND has_database_privilege(r.oid, d.oid, 'CONNECT') \
     WHERE ($1::text IS NULL OR r.rolname::text = $1::text)";

fn reserved_user(name: &str) -> Error {
    Error::invalid("user name", format!("'{name}' is reserved"))
}

fn reserved_db(name: &str) -> Error {
    Error::invalid("database name", format!("'{name}' is reserved"))
}

impl PgDriver {
    /// Refuses reserved and ignored roles.
    fn check_user(&self, name: &UserName) -> Result<()> {
        if self.is_hidden_user(name.as_str()) {
            return Err(reserved_user(name.as_str()));
        }
        Ok(())
    }

    /// Refuses reserved and ignored databases.
    fn check_db(&self, name: &DbName) -> Result<()> {
        if self.is_hidden_db(name.as_str()) {
            return Err(reserved_db(name.as_str()));
        }
        Ok(())
    }

    /// Whether the role `name` exists.
    pub(crate) async fn role_exists(&self, client: &Client, name: &str) -> Result<bool> {
        let row = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
            .await
            .map_err(stmt(Some(Subject::user(name))))?;
        Ok(row.is_some())
    }

    async fn database_exists(&self, client: &Client, name: &str) -> Result<bool> {
        let row = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await
            .map_err(stmt(Some(Subject::database(name))))?;
        Ok(row.is_some())
    }

    /// Fails with [`Error::NotFound`] unless the (visible) role exists.
    async fn require_user(&self, client: &Client, name: &UserName) -> Result<()> {
        if self.is_hidden_user(name.as_str()) || !self.role_exists(client, name.as_str()).await? {
            return Err(Error::NotFound {
                what: "user",
                name: name.to_string(),
            });
        }
        Ok(())
    }

    /// Runs one statement without parameters (utility statements cannot take any).
    async fn exec(&self, client: &Client, sql: &str, subject: Option<Subject<'_>>) -> Result<()> {
        client.batch_execute(sql).await.map_err(stmt(subject))
    }

    /// Ends the sessions of `user` (in `db`, or everywhere), so a revoked or dropped account
    /// loses what it has open, not only what it would open next.
    async fn terminate_sessions(
        &self,
        client: &Client,
        user: &str,
        db: Option<&str>,
    ) -> Result<()> {
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE usename::text = $1::text \
                 AND ($2::text IS NULL OR datname::text = $2::text) \
                 AND pid <> pg_backend_pid()",
                &[&user, &db],
            )
            .await
            .map_err(stmt(Some(Subject::user(user))))?;
        Ok(())
    }

    /// Runs `sql` in database `db` on a short-lived administrative session.
    async fn exec_in(&self, db: &str, sql: &str, subject: Option<Subject<'_>>) -> Result<()> {
        let client = self.session.connector().connect(db).await?;
        self.exec(&client, sql, subject).await
    }

    /// Every visible role with the visible databases it can connect to.
    async fn role_access(
        &self,
        client: &Client,
        only: Option<&str>,
    ) -> Result<BTreeMap<String, Vec<String>>> {
        let rows = client
            .query(ROLE_ACCESS_SQL, &[&only])
            .await
            .map_err(stmt(None))?;
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for row in rows {
            let role: String = row.try_get(0).map_err(stmt(None))?;
            let db: Option<String> = row.try_get(1).map_err(stmt(None))?;
            if self.is_hidden_user(&role) {
                continue;
            }
            let dbs = out.entry(role).or_default();
            if let Some(db) = db.filter(|d| !self.is_hidden_db(d)) {
                dbs.push(db);
            }
        }
        for dbs in out.values_mut() {
            dbs.sort();
        }
        Ok(out)
    }

    /// A [`UserInfo`] for a role name and its database names; `None` for names the API types
    /// cannot carry (roles created outside Trove).
    fn user_info(name: &str, dbs: &[String]) -> Option<UserInfo> {
        let name = UserName::new(name).ok()?;
        let databases = dbs
            .iter()
            .filter_map(|d| DbName::new(d.as_str()).ok())
            .map(DatabaseSpec::named)
            .collect();
        Some(UserInfo {
            name,
            host: HostPattern::any(),
            databases,
        })
    }

    /// Grants `user` full access on `db`: all database privileges, then all privileges on the
    /// `public` schema inside it so the user can create tables.
    async fn grant_one(&self, client: &Client, user: &str, db: &str) -> Result<()> {
        let (u, d) = (quote_ident(user)?, quote_ident(db)?);
        self.exec(
            client,
            &format!("GRANT ALL PRIVILEGES ON DATABASE {d} TO {u}"),
            Some(Subject::database(db)),
        )
        .await?;
        match self
            .exec_in(
                db,
                &format!("GRANT ALL ON SCHEMA public TO {u}"),
                Some(Subject::user(user)),
            )
            .await
        {
            // A database without a `public` schema (dropped by its users) is fine.
            Err(Error::Datastore { code, .. }) if code == "3F000" => Ok(()),
            other => other,
        }
    }

    /// Reassigns what `user` owns to the administrative role and drops its privileges in every
    /// database it has any, so that `DROP ROLE` can succeed.
    async fn release_role(&self, client: &Client, user: &str) -> Result<()> {
        let rows = client
            .query(
                "SELECT DISTINCT d.datname::text FROM pg_shdepend s \
                 JOIN pg_database d ON d.oid = s.dbid \
                 WHERE s.refclassid = 'pg_authid'::regclass \
                   AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = $1) \
                   AND d.datallowconn",
                &[&user],
            )
            .await
            .map_err(stmt(Some(Subject::user(user))))?;
        let u = quote_ident(user)?;
        let admin = quote_ident(ADMIN_USER)?;
        let release = format!("REASSIGN OWNED BY {u} TO {admin}; DROP OWNED BY {u}");
        for row in rows {
            let db: String = row.try_get(0).map_err(stmt(None))?;
            if db != "postgres" {
                self.exec_in(&db, &release, Some(Subject::user(user)))
                    .await?;
            }
        }
        // Database-level privileges are shared objects: dropped from any database.
        self.exec(client, &release, Some(Subject::user(user))).await
    }
}

#[async_trait]
impl Admin for PgDriver {
    async fn list_databases(
        &self,
        ctx: &OpContext,
        page: &PageRequest,
    ) -> Result<Page<DatabaseSpec>> {
        ctx.cancelled()?;
        let client = self.session.client().await?;
        let rows = client
            .query(
                "SELECT datname::text, pg_encoding_to_char(encoding)::text, datcollate::text \
                 FROM pg_database WHERE NOT datistemplate",
                &[],
            )
            .await
            .map_err(stmt(None))?;
        let mut dbs = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get(0).map_err(stmt(None))?;
            let charset: String = row.try_get(1).map_err(stmt(None))?;
            let collate: String = row.try_get(2).map_err(stmt(None))?;
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
        let client = self.session.client().await?;
        for db in dbs {
            ctx.cancelled()?;
            let name = db.name.as_str();
            let subject = Some(Subject::database(name));
            if self.database_exists(&client, name).await? {
                continue;
            }
            let mut sql = format!("CREATE DATABASE {}", quote_ident(name)?);
            if db.character_set.is_some() || db.collate.is_some() {
                // template1 may hold another encoding or locale; template0 accepts any.
                sql.push_str(" TEMPLATE template0");
            }
            if let Some(cs) = &db.character_set {
                sql.push_str(&format!(" ENCODING {}", quote_literal(cs)?));
            }
            if let Some(co) = &db.collate {
                let lit = quote_literal(co)?;
                sql.push_str(&format!(" LC_COLLATE {lit} LC_CTYPE {lit}"));
            }
            match self.exec(&client, &sql, subject).await {
                // Created concurrently: the database exists, which is what was asked.
                Ok(()) | Err(Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
            // Access is grant-controlled: nobody but granted users connects.
            self.exec(
                &client,
                &format!(
                    "REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC",
                    quote_ident(name)?
                ),
                subject,
            )
            .await?;
            tracing::info!(database = name, "Database created.");
        }
        Ok(())
    }

    async fn drop_database(&self, ctx: &OpContext, name: &DbName) -> Result<()> {
        ctx.cancelled()?;
        self.check_db(name)?;
        let client = self.session.client().await?;
        // FORCE ends the sessions still connected to it instead of failing.
        self.exec(
            &client,
            &format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(name.as_str())?
            ),
            Some(Subject::database(name.as_str())),
        )
        .await
    }

    async fn create_users(&self, ctx: &OpContext, users: &[UserSpec]) -> Result<()> {
        for u in users {
            self.check_user(&u.name)?;
            for db in &u.databases {
                self.check_db(db)?;
            }
        }
        let client = self.session.client().await?;
        for u in users {
            ctx.cancelled()?;
            let name = u.name.as_str();
            let subject = Some(Subject::user(name));
            if self.role_exists(&client, name).await? {
                return Err(Error::AlreadyExists {
                    what: "user",
                    name: name.to_owned(),
                });
            }
            for db in &u.databases {
                if !self.database_exists(&client, db.as_str()).await? {
                    return Err(Error::NotFound {
                        what: "database",
                        name: db.to_string(),
                    });
                }
            }
            self.exec(
                &client,
                &format!(
                    "CREATE ROLE {} WITH LOGIN PASSWORD {}",
                    quote_ident(name)?,
                    password_literal(&u.password)?
                ),
                subject,
            )
            .await?;
            for db in &u.databases {
                self.grant_one(&client, name, db.as_str()).await?;
            }
            tracing::info!(user = name, "User created.");
        }
        Ok(())
    }

    async fn get_user(&self, ctx: &OpContext, user: &UserRef) -> Result<Option<UserInfo>> {
        ctx.cancelled()?;
        let name = user.name.as_str();
        if self.is_hidden_user(name) {
            return Ok(None);
        }
        let client = self.session.client().await?;
        let access = self.role_access(&client, Some(name)).await?;
        Ok(access.get(name).and_then(|dbs| Self::user_info(name, dbs)))
    }

    async fn list_users(&self, ctx: &OpContext, page: &PageRequest) -> Result<Page<UserInfo>> {
        ctx.cancelled()?;
        let client = self.session.client().await?;
        let access = self.role_access(&client, None).await?;
        // BTreeMap iteration is in byte order of the names, the order pages are cut in.
        let users: Vec<UserInfo> = access
            .iter()
            .filter_map(|(name, dbs)| Self::user_info(name, dbs))
            .collect();
        Ok(Page::from_sorted(users, |u| u.name.to_string(), page))
    }

    async fn drop_user(&self, ctx: &OpContext, user: &UserRef) -> Result<()> {
        ctx.cancelled()?;
        self.check_user(&user.name)?;
        let name = user.name.as_str();
        let client = self.session.client().await?;
        if !self.role_exists(&client, name).await? {
            return Ok(());
        }
        self.terminate_sessions(&client, name, None).await?;
        self.release_role(&client, name).await?;
        self.exec(
            &client,
            &format!("DROP ROLE IF EXISTS {}", quote_ident(name)?),
            Some(Subject::user(name)),
        )
        .await?;
        tracing::info!(user = name, "User dropped.");
        Ok(())
    }

    async fn change_passwords(&self, ctx: &OpContext, changes: &[PasswordChange]) -> Result<()> {
        for c in changes {
            self.check_user(&c.user.name)?;
        }
        let client = self.session.client().await?;
        for c in changes {
            ctx.cancelled()?;
            let name = c.user.name.as_str();
            self.require_user(&client, &c.user.name).await?;
            self.exec(
                &client,
                &format!(
                    "ALTER ROLE {} WITH PASSWORD {}",
                    quote_ident(name)?,
                    password_literal(&c.password)?
                ),
                Some(Subject::user(name)),
            )
            .await?;
        }
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
        if let Some(new) = &update.name {
            self.check_user(new)?;
        }
        let client = self.session.client().await?;
        self.require_user(&client, &user.name).await?;
        let old = user.name.as_str();
        let mut current = old;
        let mut statements = Vec::new();
        if let Some(new) = update.name.as_ref().filter(|n| n.as_str() != old) {
            if self.role_exists(&client, new.as_str()).await? {
                return Err(Error::AlreadyExists {
                    what: "user",
                    name: new.to_string(),
                });
            }
            statements.push(format!(
                "ALTER ROLE {} RENAME TO {}",
                quote_ident(old)?,
                quote_ident(new.as_str())?
            ));
            current = new.as_str();
        }
        if let Some(pw) = &update.password {
            statements.push(format!(
                "ALTER ROLE {} WITH PASSWORD {}",
                quote_ident(current)?,
                password_literal(pw)?
            ));
        }
        // Hosts mean nothing to PostgreSQL; a host change is accepted and ignored.
        if statements.is_empty() {
            return Ok(());
        }
        // One simple-query message runs as one implicit transaction: all or nothing.
        self.exec(&client, &statements.join("; "), Some(Subject::user(old)))
            .await
    }

    async fn grant_access(&self, ctx: &OpContext, user: &UserRef, dbs: &[DbName]) -> Result<()> {
        ctx.cancelled()?;
        self.check_user(&user.name)?;
        for db in dbs {
            self.check_db(db)?;
        }
        let client = self.session.client().await?;
        self.require_user(&client, &user.name).await?;
        for db in dbs {
            if !self.database_exists(&client, db.as_str()).await? {
                return Err(Error::NotFound {
                    what: "database",
                    name: db.to_string(),
                });
            }
        }
        for db in dbs {
            ctx.cancelled()?;
            self.grant_one(&client, user.name.as_str(), db.as_str())
                .await?;
        }
        Ok(())
    }

    async fn revoke_access(&self, ctx: &OpContext, user: &UserRef, db: &DbName) -> Result<()> {
        ctx.cancelled()?;
        self.check_user(&user.name)?;
        self.check_db(db)?;
        let (name, dbn) = (user.name.as_str(), db.as_str());
        let client = self.session.client().await?;
        if !self.role_exists(&client, name).await? || !self.database_exists(&client, dbn).await? {
            return Ok(());
        }
        let u = quote_ident(name)?;
        match self
            .exec_in(
                dbn,
                &format!("REVOKE ALL ON SCHEMA public FROM {u}"),
                Some(Subject::user(name)),
            )
            .await
        {
            Ok(()) => {}
            Err(Error::Datastore { code, .. }) if code == "3F000" => {}
            Err(e) => return Err(e),
        }
        self.exec(
            &client,
            &format!(
                "REVOKE ALL PRIVILEGES ON DATABASE {} FROM {u}",
                quote_ident(dbn)?
            ),
            Some(Subject::database(dbn)),
        )
        .await?;
        self.terminate_sessions(&client, name, Some(dbn)).await
    }

    async fn list_access(&self, ctx: &OpContext, user: &UserRef) -> Result<Vec<DatabaseSpec>> {
        ctx.cancelled()?;
        let name = user.name.as_str();
        let client = self.session.client().await?;
        self.require_user(&client, &user.name).await?;
        let access = self.role_access(&client, Some(name)).await?;
        Ok(access
            .get(name)
            .and_then(|dbs| Self::user_info(name, dbs))
            .map(|u| u.databases)
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
        let client = self.session.client().await?;
        let root = quote_ident(ROOT_USER)?;
        let verb = if self.role_exists(&client, ROOT_USER).await? {
            "ALTER"
        } else {
            "CREATE"
        };
        self.exec(
            &client,
            &format!(
                "{verb} ROLE {root} WITH SUPERUSER LOGIN PASSWORD {}",
                password_literal(&password)?
            ),
            Some(Subject::user(ROOT_USER)),
        )
        .await?;
        tracing::info!("Root enabled.");
        Ok(RootCredentials {
            name: UserName::new(ROOT_USER)?,
            password,
        })
    }

    async fn disable_root(&self, ctx: &OpContext) -> Result<()> {
        ctx.cancelled()?;
        let client = self.session.client().await?;
        if !self.role_exists(&client, ROOT_USER).await? {
            return Ok(());
        }
        // A random password nobody is told, on top of NOLOGIN.
        let throwaway = Password::generate(ROOT_PASSWORD_LEN)?;
        self.exec(
            &client,
            &format!(
                "ALTER ROLE {} WITH NOSUPERUSER NOLOGIN PASSWORD {}",
                quote_ident(ROOT_USER)?,
                password_literal(&throwaway)?
            ),
            Some(Subject::user(ROOT_USER)),
        )
        .await?;
        self.terminate_sessions(&client, ROOT_USER, None).await?;
        tracing::info!("Root disabled.");
        Ok(())
    }

    async fn is_root_enabled(&self, ctx: &OpContext) -> Result<bool> {
        ctx.cancelled()?;
        let client = self.session.client().await?;
        let row = client
            .query_opt(
                "SELECT rolsuper AND rolcanlogin FROM pg_roles WHERE rolname = $1",
                &[&ROOT_USER],
            )
            .await
            .map_err(stmt(Some(Subject::user(ROOT_USER))))?;
        match row {
            Some(r) => r.try_get::<_, bool>(0).map_err(stmt(None)),
            None => Ok(false),
        }
    }
}
