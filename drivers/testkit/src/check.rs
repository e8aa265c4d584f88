//! Assertion and polling helpers shared by the kit functions.
//!
//! Every driver call made by the kit goes through [`within`], so a hung driver fails its test
//! with a message instead of hanging the run; polling loops are bounded by a deadline.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use guest_agent_api::admin::{DatabaseSpec, Page, PageRequest, UserInfo, UserRef, UserSpec};
use guest_agent_api::ident::{DbName, HostPattern, Password, UserName};
use guest_agent_api::{Capabilities, Error, Result};
use tokio::time::{Instant, sleep, timeout};

use crate::Harness;

/// Longest a single driver call may take before the kit calls it hung. Generous: lifecycle
/// calls start and stop real servers on small machines.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(180);

/// How long the kit waits for a state it polls for (a crash to be noticed, a position).
pub const POLL_TIMEOUT: Duration = Duration::from_secs(20);

/// Pause between two polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Awaits `fut`, panicking with `what` if it takes longer than [`CALL_TIMEOUT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match timeout(CALL_TIMEOUT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what} did not finish within {CALL_TIMEOUT:?}"),
    }
}

/// Unwraps `r`, panicking with the error and `what`.
pub fn ok<T>(what: &str, r: Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what} failed: {e} (kind {}): {e:?}", e.kind()),
    }
}

/// Asserts that `r` is [`Error::NotSupported`] naming this driver.
pub fn assert_not_supported<T: Debug>(h: &Harness, what: &str, r: Result<T>) {
    let name = h.driver_name();
    match r {
        Err(Error::NotSupported { driver, .. }) => assert_eq!(
            driver, name,
            "{what}: NotSupported must name the driver '{name}'"
        ),
        other => panic!(
            "{what}: capability not declared by '{name}', so the call must return \
             Error::NotSupported, got {other:?}"
        ),
    }
}

/// Asserts that `r` failed with the error kind `kind` (see [`Error::kind`]).
pub fn assert_kind<T: Debug>(what: &str, kind: &str, r: Result<T>) -> Error {
    match r {
        Err(e) if e.kind() == kind => e,
        other => panic!("{what}: expected an error of kind {kind}, got {other:?}"),
    }
}

/// Polls `check` until it returns `true` or `limit` passes; returns the final answer.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(POLL_INTERVAL).await;
    }
}

/// The driver's declared capabilities.
pub fn caps(h: &Harness) -> Capabilities {
    h.driver.info().capabilities
}

/// The host used for every user the kit creates.
pub fn any_host() -> HostPattern {
    HostPattern::any()
}

/// The key of a user for most operations, on [`any_host`].
pub fn user_ref(name: &UserName) -> UserRef {
    UserRef {
        name: name.clone(),
        host: any_host(),
    }
}

/// Creates the databases `names` through the driver and checks them with the probe.
pub async fn create_dbs(h: &Harness, names: &[DbName]) {
    let specs: Vec<DatabaseSpec> = names.iter().cloned().map(DatabaseSpec::named).collect();
    let ctx = h.ctx("create_databases");
    ok(
        "create_databases",
        within(
            "create_databases",
            h.driver.admin().create_databases(&ctx, &specs),
        )
        .await,
    );
    for n in names {
        assert!(
            h.probe.database_exists(n.as_str()).await,
            "database {n} was created by the driver but the probe does not see it"
        );
    }
}

/// Creates one fresh database and returns its name.
pub async fn fresh_db(h: &Harness) -> DbName {
    let db = h.names.db_name();
    create_dbs(h, std::slice::from_ref(&db)).await;
    db
}

/// Creates one user with `password` and access to `databases`, checked with the probe.
pub async fn create_user(h: &Harness, name: &UserName, password: &Password, databases: &[DbName]) {
    let spec = UserSpec {
        name: name.clone(),
        host: any_host(),
        password: password.clone(),
        databases: databases.to_vec(),
    };
    let ctx = h.ctx("create_users");
    ok(
        "create_users",
        within("create_users", h.driver.admin().create_users(&ctx, &[spec])).await,
    );
    assert!(
        h.probe
            .user_exists(name.as_str(), any_host().as_str())
            .await,
        "user {name} was created by the driver but the probe does not see it"
    );
}

/// Creates one fresh user with a fresh password and access to `databases`.
pub async fn fresh_user(h: &Harness, databases: &[DbName]) -> (UserName, Password) {
    let name = h.names.user_name();
    let password = h.names.password();
    create_user(h, &name, &password, databases).await;
    (name, password)
}

/// One page of databases.
pub async fn list_databases(h: &Harness, req: &PageRequest) -> Page<DatabaseSpec> {
    let ctx = h.ctx("list_databases");
    ok(
        "list_databases",
        within("list_databases", h.driver.admin().list_databases(&ctx, req)).await,
    )
}

/// One page of users.
pub async fn list_users(h: &Harness, req: &PageRequest) -> Page<UserInfo> {
    let ctx = h.ctx("list_users");
    ok(
        "list_users",
        within("list_users", h.driver.admin().list_users(&ctx, req)).await,
    )
}

/// Follows `next_marker` from the first page with page size `limit` to the end, asserting
/// page sizes and that the walk ends; returns the pages.
pub async fn walk_pages<T, F, Fut>(limit: u32, upper_bound: usize, mut fetch: F) -> Vec<Page<T>>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: Future<Output = Page<T>>,
{
    let mut pages = Vec::new();
    let mut marker = None;
    let page_len = usize::try_from(limit).expect("small limit");
    loop {
        let page = fetch(PageRequest {
            limit: Some(limit),
            marker: marker.clone(),
            include_marker: false,
        })
        .await;
        assert!(
            page.items.len() <= page_len,
            "a page with limit {limit} has {} items",
            page.items.len()
        );
        let next = page.next_marker.clone();
        if next.is_some() {
            assert_eq!(
                page.items.len(),
                page_len,
                "a page that is not the last must be full"
            );
        }
        pages.push(page);
        assert!(
            pages.len() <= upper_bound,
            "pagination did not end after {upper_bound} pages (marker loop?)"
        );
        match next {
            Some(m) => {
                assert_ne!(marker.as_ref(), Some(&m), "next_marker did not move");
                marker = Some(m);
            }
            None => return pages,
        }
    }
}

/// Names of datastore-internal databases no driver may list.
pub const SYSTEM_DATABASES: &[&str] = &[
    "postgres",
    "template0",
    "template1",
    "mysql",
    "information_schema",
    "performance_schema",
    "sys",
];
