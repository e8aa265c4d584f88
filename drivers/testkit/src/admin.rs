//! Conformance functions for the administration group: databases, users, grants and root.
//!
//! Every effect is checked through the [`Probe`](crate::Probe) (can this user log in, write,
//! does this database exist), not only through the driver's own listings. Functions whose
//! capability the driver does not declare assert [`Error::NotSupported`] instead.

use std::collections::BTreeSet;

use guest_agent_api::Error;
use guest_agent_api::admin::{
    DatabaseSpec, PageRequest, PasswordChange, UserRef, UserSpec, UserUpdate,
};
use guest_agent_api::ident::{DbName, HostPattern, Password};

use crate::Harness;
use crate::check::{
    SYSTEM_DATABASES, any_host, assert_kind, assert_not_supported, caps, create_dbs, create_user,
    fresh_db, fresh_user, list_databases, list_users, ok, user_ref, walk_pages, within,
};

/// Asserts the database calls say `NotSupported` when `databases` is not declared; returns
/// whether the caller should go on.
async fn databases_supported(h: &Harness) -> bool {
    if caps(h).databases {
        return true;
    }
    let a = h.driver.admin();
    let db = h.names.db_name();
    let r = a
        .list_databases(&h.ctx("list_databases"), &PageRequest::default())
        .await;
    assert_not_supported(h, "list_databases", r);
    let r = a
        .create_databases(
            &h.ctx("create_databases"),
            &[DatabaseSpec::named(db.clone())],
        )
        .await;
    assert_not_supported(h, "create_databases", r);
    let r = a.drop_database(&h.ctx("drop_database"), &db).await;
    assert_not_supported(h, "drop_database", r);
    false
}

/// Asserts the user calls say `NotSupported` when `users` is not declared; returns whether
/// the caller should go on.
async fn users_supported(h: &Harness) -> bool {
    if caps(h).users {
        return true;
    }
    let a = h.driver.admin();
    let user = user_ref(&h.names.user_name());
    let spec = UserSpec {
        name: user.name.clone(),
        host: user.host.clone(),
        password: h.names.password(),
        databases: Vec::new(),
    };
    let r = a.create_users(&h.ctx("create_users"), &[spec]).await;
    assert_not_supported(h, "create_users", r);
    let r = a
        .list_users(&h.ctx("list_users"), &PageRequest::default())
        .await;
    assert_not_supported(h, "list_users", r);
    let r = a.get_user(&h.ctx("get_user"), &user).await;
    assert_not_supported(h, "get_user", r);
    let r = a.drop_user(&h.ctx("drop_user"), &user).await;
    assert_not_supported(h, "drop_user", r);
    let change = PasswordChange {
        user: user.clone(),
        password: h.names.password(),
    };
    let r = a
        .change_passwords(&h.ctx("change_passwords"), &[change])
        .await;
    assert_not_supported(h, "change_passwords", r);
    false
}

/// Asserts the grant calls say `NotSupported` when `grants` is not declared; returns whether
/// the caller should go on.
async fn grants_supported(h: &Harness) -> bool {
    if caps(h).grants {
        return true;
    }
    let a = h.driver.admin();
    let user = user_ref(&h.names.user_name());
    let db = h.names.db_name();
    let r = a
        .grant_access(&h.ctx("grant_access"), &user, std::slice::from_ref(&db))
        .await;
    assert_not_supported(h, "grant_access", r);
    let r = a.revoke_access(&h.ctx("revoke_access"), &user, &db).await;
    assert_not_supported(h, "revoke_access", r);
    let r = a.list_access(&h.ctx("list_access"), &user).await;
    assert_not_supported(h, "list_access", r);
    false
}

/// Asserts the root calls say `NotSupported` when `root` is not declared; returns whether the
/// caller should go on.
async fn root_supported(h: &Harness) -> bool {
    if caps(h).root {
        return true;
    }
    let a = h.driver.admin();
    let r = a.enable_root(&h.ctx("enable_root"), None).await;
    assert_not_supported(h, "enable_root", r);
    let r = a.disable_root(&h.ctx("disable_root")).await;
    assert_not_supported(h, "disable_root", r);
    let r = a.is_root_enabled(&h.ctx("is_root_enabled")).await;
    assert_not_supported(h, "is_root_enabled", r);
    false
}

/// Every database the driver lists (one unpaged request), by name.
async fn listed_db_names(h: &Harness) -> Vec<String> {
    list_databases(h, &PageRequest::default())
        .await
        .items
        .into_iter()
        .map(|d| d.name.as_str().to_owned())
        .collect()
}

/// The databases of this run that `user` can access, according to `list_access`.
async fn access_of(h: &Harness, user: &UserRef) -> BTreeSet<String> {
    let ctx = h.ctx("list_access");
    let dbs = ok(
        "list_access",
        within("list_access", h.driver.admin().list_access(&ctx, user)).await,
    );
    let ours: BTreeSet<String> = h.names.issued().into_iter().collect();
    dbs.into_iter()
        .map(|d| d.name.as_str().to_owned())
        .filter(|n| ours.contains(n))
        .collect()
}

fn set_of(dbs: &[&DbName]) -> BTreeSet<String> {
    dbs.iter().map(|d| d.as_str().to_owned()).collect()
}

/// A created database exists for the probe and is listed; system databases are not.
pub async fn create_database_visible_to_probe(h: &Harness) {
    if !databases_supported(h).await {
        return;
    }
    let db = h.names.db_name();
    assert!(!h.probe.database_exists(db.as_str()).await);
    create_dbs(h, std::slice::from_ref(&db)).await;
    let listed = listed_db_names(h).await;
    assert!(
        listed.iter().any(|n| n == db.as_str()),
        "created database {db} is not listed: {listed:?}"
    );
    for sys in SYSTEM_DATABASES {
        assert!(
            !listed.iter().any(|n| n == sys),
            "system database {sys} must not be listed: {listed:?}"
        );
    }
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "list_databases must be in name order");
}

/// Creating an existing database succeeds and leaves it (and its contents) in place.
pub async fn create_database_is_idempotent(h: &Harness) {
    if !databases_supported(h).await {
        return;
    }
    let db = fresh_db(h).await;
    let other = h.names.db_name();
    // The second call repeats `db` and adds `other`: both must exist afterwards.
    create_dbs(h, &[db.clone(), other.clone()]).await;
    create_dbs(h, std::slice::from_ref(&db)).await;
    let listed = listed_db_names(h).await;
    assert_eq!(
        listed.iter().filter(|n| *n == db.as_str()).count(),
        1,
        "{db} must be listed exactly once: {listed:?}"
    );
    assert!(listed.iter().any(|n| n == other.as_str()));
}

/// Dropping removes the database for the probe; dropping a missing one is not an error.
pub async fn drop_database_idempotent(h: &Harness) {
    if !databases_supported(h).await {
        return;
    }
    let db = fresh_db(h).await;
    let keep = fresh_db(h).await;
    let a = h.driver.admin();
    for round in 0..2 {
        let ctx = h.ctx("drop_database");
        ok(
            &format!("drop_database (round {round})"),
            within("drop_database", a.drop_database(&ctx, &db)).await,
        );
        assert!(
            !h.probe.database_exists(db.as_str()).await,
            "dropped database {db} still exists"
        );
    }
    let never = h.names.db_name();
    let ctx = h.ctx("drop_database");
    ok(
        "drop_database of a database that never existed",
        within("drop_database", a.drop_database(&ctx, &never)).await,
    );
    assert!(
        h.probe.database_exists(keep.as_str()).await,
        "dropping {db} must not touch {keep}"
    );
    assert!(!listed_db_names(h).await.iter().any(|n| n == db.as_str()));
}

/// Trove pagination: `limit`, `marker`, `include_marker`, `next_marker` only on full pages.
pub async fn list_databases_paginates(h: &Harness) {
    if !databases_supported(h).await {
        return;
    }
    let ours: Vec<DbName> = (0..5).map(|_| h.names.db_name()).collect();
    create_dbs(h, &ours).await;
    let all = listed_db_names(h).await;
    for db in &ours {
        assert!(all.iter().any(|n| n == db.as_str()), "{db} not listed");
    }

    // Walking pages of 2 gives the same list as one unpaged request.
    let pages = walk_pages(2, all.len() + 2, |req| async move {
        list_databases(h, &req).await
    })
    .await;
    let walked: Vec<String> = pages
        .iter()
        .flat_map(|p| p.items.iter().map(|d| d.name.as_str().to_owned()))
        .collect();
    assert_eq!(walked, all, "paged walk differs from the unpaged list");
    assert_eq!(pages.len(), all.len().div_ceil(2).max(1));

    // A marker is the name of a database: the page starts after it, or at it when included.
    let after = list_databases(
        h,
        &PageRequest {
            limit: Some(2),
            marker: Some(ours[1].as_str().to_owned()),
            include_marker: false,
        },
    )
    .await;
    let names: Vec<&str> = after.items.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, [ours[2].as_str(), ours[3].as_str()]);
    assert_eq!(after.next_marker.as_deref(), Some(ours[3].as_str()));

    let from = list_databases(
        h,
        &PageRequest {
            limit: Some(2),
            marker: Some(ours[1].as_str().to_owned()),
            include_marker: true,
        },
    )
    .await;
    let names: Vec<&str> = from.items.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, [ours[1].as_str(), ours[2].as_str()]);

    // The tail: the last of ours is last in the list only if nothing sorts after it, so
    // compare with the unpaged list instead.
    let tail = list_databases(
        h,
        &PageRequest {
            limit: None,
            marker: Some(ours[3].as_str().to_owned()),
            include_marker: false,
        },
    )
    .await;
    let expected: Vec<String> = all
        .iter()
        .filter(|n| n.as_str() > ours[3].as_str())
        .cloned()
        .collect();
    let got: Vec<String> = tail
        .items
        .iter()
        .map(|d| d.name.as_str().to_owned())
        .collect();
    assert_eq!(got, expected);
    assert_eq!(tail.next_marker, None, "an unlimited page is the last");
}

/// With `database_charset` declared, a database created with the character set and collation
/// the driver reports for a default one is listed with them, and an unknown character set is
/// refused without creating anything; without it, a character set is `NotSupported`.
pub async fn create_database_with_charset(h: &Harness) {
    if !databases_supported(h).await {
        return;
    }
    let a = h.driver.admin();
    if !caps(h).database_charset {
        let db = h.names.db_name();
        let spec = DatabaseSpec::new(db.clone(), Some("utf8".to_owned()), None)
            .expect("valid character set");
        let ctx = h.ctx("create_databases");
        let r = within("create_databases", a.create_databases(&ctx, &[spec])).await;
        assert_not_supported(h, "create_databases with a character set", r);
        assert!(!h.probe.database_exists(db.as_str()).await);
        return;
    }
    let plain = fresh_db(h).await;
    let listed = list_databases(h, &PageRequest::default()).await;
    let reported = listed
        .items
        .iter()
        .find(|d| d.name == plain)
        .unwrap_or_else(|| panic!("{plain} is not listed"))
        .clone();
    let charset = reported.character_set.clone().unwrap_or_else(|| {
        panic!("database_charset is declared, so list_databases reports it: {reported:?}")
    });

    let db = h.names.db_name();
    let spec = DatabaseSpec::new(db.clone(), Some(charset), reported.collate.clone())
        .expect("the driver reports valid character sets");
    let ctx = h.ctx("create_databases");
    ok(
        "create_databases with a character set",
        within("create_databases", a.create_databases(&ctx, &[spec])).await,
    );
    assert!(h.probe.database_exists(db.as_str()).await);
    let listed = list_databases(h, &PageRequest::default()).await;
    let got = listed
        .items
        .iter()
        .find(|d| d.name == db)
        .unwrap_or_else(|| panic!("{db} is not listed"));
    assert_eq!(
        got.character_set, reported.character_set,
        "character set of {db}"
    );
    assert_eq!(got.collate, reported.collate, "collation of {db}");

    let bogus = h.names.db_name();
    let spec = DatabaseSpec::new(bogus.clone(), Some("ktnosuchcharset".to_owned()), None)
        .expect("syntactically valid character set");
    let ctx = h.ctx("create_databases");
    let r = within("create_databases", a.create_databases(&ctx, &[spec])).await;
    assert!(r.is_err(), "an unknown character set must be refused");
    assert!(
        !h.probe.database_exists(bogus.as_str()).await,
        "a refused character set must not leave the database behind"
    );
}

/// With `user_hosts` declared, one name on two hosts is two accounts; without it, hosts are
/// ignored: a user created on one host is found on any.
pub async fn user_hosts_are_respected_or_ignored(h: &Harness) {
    if !users_supported(h).await {
        return;
    }
    let a = h.driver.admin();
    let name = h.names.user_name();
    let local = HostPattern::new("localhost").expect("valid host");
    let spec = |host: &HostPattern, password: &Password| UserSpec {
        name: name.clone(),
        host: host.clone(),
        password: password.clone(),
        databases: Vec::new(),
    };
    let pw_local = h.names.password();
    let ctx = h.ctx("create_users");
    ok(
        "create_users on localhost",
        within(
            "create_users",
            a.create_users(&ctx, &[spec(&local, &pw_local)]),
        )
        .await,
    );
    let on_local = UserRef {
        name: name.clone(),
        host: local.clone(),
    };
    if !caps(h).user_hosts {
        assert!(
            h.probe
                .user_exists(name.as_str(), any_host().as_str())
                .await,
            "without user_hosts the host is ignored"
        );
        let ctx = h.ctx("get_user");
        let got = ok(
            "get_user",
            within("get_user", a.get_user(&ctx, &user_ref(&name))).await,
        );
        assert!(
            got.is_some(),
            "without user_hosts a user created on localhost is found on '%'"
        );
        let ctx = h.ctx("create_users");
        let r = within(
            "create_users",
            a.create_users(&ctx, &[spec(&any_host(), &h.names.password())]),
        )
        .await;
        assert_kind("the same name on another host", "AlreadyExists", r);
        return;
    }
    assert!(h.probe.user_exists(name.as_str(), local.as_str()).await);
    assert!(
        !h.probe
            .user_exists(name.as_str(), any_host().as_str())
            .await,
        "a user created on localhost must not exist on '%'"
    );
    let pw_any = h.names.password();
    let ctx = h.ctx("create_users");
    ok(
        "create_users on '%'",
        within(
            "create_users",
            a.create_users(&ctx, &[spec(&any_host(), &pw_any)]),
        )
        .await,
    );
    assert!(
        h.probe
            .user_exists(name.as_str(), any_host().as_str())
            .await
    );
    let ctx = h.ctx("drop_user");
    ok(
        "drop_user on localhost",
        within("drop_user", a.drop_user(&ctx, &on_local)).await,
    );
    assert!(!h.probe.user_exists(name.as_str(), local.as_str()).await);
    assert!(
        h.probe
            .user_exists(name.as_str(), any_host().as_str())
            .await,
        "dropping the localhost account must keep the '%' one"
    );
}

/// A created user exists for the probe and can log in with its password (and not another).
pub async fn create_user_then_login(h: &Harness) {
    if !users_supported(h).await {
        return;
    }
    let grants = caps(h).grants && caps(h).databases;
    let db = if grants {
        Some(fresh_db(h).await)
    } else {
        None
    };
    let dbs: Vec<DbName> = db.iter().cloned().collect();
    let user = h.names.user_name();
    let password = h.names.password();
    assert!(
        !h.probe
            .user_exists(user.as_str(), any_host().as_str())
            .await
    );
    create_user(h, &user, &password, &dbs).await;

    let on = db.as_ref().map(DbName::as_str);
    assert!(
        h.probe
            .can_login(user.as_str(), password.expose(), on)
            .await,
        "new user {user} cannot log in with its password"
    );
    let wrong = h.names.password();
    assert!(
        !h.probe.can_login(user.as_str(), wrong.expose(), on).await,
        "new user {user} logs in with a wrong password"
    );
    assert!(
        !h.probe
            .is_superuser(user.as_str(), any_host().as_str())
            .await,
        "a user created through the driver must not be a superuser"
    );

    let ctx = h.ctx("get_user");
    let info = ok(
        "get_user",
        within(
            "get_user",
            h.driver.admin().get_user(&ctx, &user_ref(&user)),
        )
        .await,
    )
    .unwrap_or_else(|| panic!("get_user does not find the new user {user}"));
    assert_eq!(info.name, user);
    if let Some(db) = &db {
        assert!(
            info.databases.iter().any(|d| &d.name == db),
            "get_user must report access to {db}: {info:?}"
        );
    }
}

/// Creating an existing user fails with `AlreadyExists`; users before it in the list stay.
pub async fn create_existing_user_is_already_exists(h: &Harness) {
    if !users_supported(h).await {
        return;
    }
    let (user, password) = fresh_user(h, &[]).await;
    let before = UserSpec {
        name: h.names.user_name(),
        host: any_host(),
        password: h.names.password(),
        databases: Vec::new(),
    };
    let again = UserSpec {
        name: user.clone(),
        host: any_host(),
        password: h.names.password(),
        databases: Vec::new(),
    };
    let ctx = h.ctx("create_users");
    let r = within(
        "create_users",
        h.driver
            .admin()
            .create_users(&ctx, &[before.clone(), again]),
    )
    .await;
    match assert_kind("create_users with an existing user", "AlreadyExists", r) {
        Error::AlreadyExists { name, .. } => assert!(
            name.contains(user.as_str()),
            "AlreadyExists must name {user}, names {name}"
        ),
        e => panic!("unexpected {e:?}"),
    }
    assert!(
        h.probe
            .user_exists(before.name.as_str(), any_host().as_str())
            .await,
        "a user before the existing one in the list must stay created"
    );
    assert!(
        h.probe
            .can_login(user.as_str(), password.expose(), None)
            .await,
        "the existing user's password must not change"
    );
}

/// `get_user` of a user that does not exist is `Ok(None)`.
pub async fn get_user_missing_is_none(h: &Harness) {
    if !users_supported(h).await {
        return;
    }
    let user = h.names.user_name();
    let ctx = h.ctx("get_user");
    let got = ok(
        "get_user",
        within(
            "get_user",
            h.driver.admin().get_user(&ctx, &user_ref(&user)),
        )
        .await,
    );
    assert!(got.is_none(), "missing user reported as {got:?}");
}

/// `list_users` hides administrative (superuser) accounts and pages like `list_databases`.
pub async fn list_users_hides_admin_and_paginates(h: &Harness) {
    if !users_supported(h).await {
        return;
    }
    let mut ours = Vec::new();
    for _ in 0..5 {
        ours.push(fresh_user(h, &[]).await.0);
    }
    let all = list_users(h, &PageRequest::default()).await;
    assert_eq!(all.next_marker, None, "an unlimited page is the last");
    for u in &ours {
        assert!(
            all.items.iter().any(|i| &i.name == u),
            "created user {u} is not listed"
        );
    }
    for info in &all.items {
        assert!(
            !h.probe
                .is_superuser(info.name.as_str(), info.host.as_str())
                .await,
            "list_users must hide administrative users, lists superuser {}",
            info.name
        );
    }
    let keys: Vec<String> = all
        .items
        .iter()
        .map(|i| format!("{}@{}", i.name, i.host))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "list_users must be in name@host order");

    let pages = walk_pages(2, all.items.len() + 2, |req| async move {
        list_users(h, &req).await
    })
    .await;
    let walked: Vec<_> = pages.iter().flat_map(|p| p.items.clone()).collect();
    assert_eq!(
        walked, all.items,
        "paged walk differs from the unpaged list"
    );

    // The marker the driver hands out, included, starts the next page with the item it names.
    let first = &pages[0];
    let marker = first
        .next_marker
        .clone()
        .expect("at least five users, so the first page of two has a next marker");
    let again = list_users(
        h,
        &PageRequest {
            limit: Some(2),
            marker: Some(marker),
            include_marker: true,
        },
    )
    .await;
    assert_eq!(
        again.items.first(),
        first.items.last(),
        "include_marker must start the page with the marker's item"
    );
}

/// A dropped user cannot log in and is gone for the probe; dropping again is not an error.
pub async fn drop_user_then_login_fails(h: &Harness) {
    if !users_supported(h).await {
        return;
    }
    let (user, password) = fresh_user(h, &[]).await;
    assert!(
        h.probe
            .can_login(user.as_str(), password.expose(), None)
            .await
    );
    let a = h.driver.admin();
    for round in 0..2 {
        let ctx = h.ctx("drop_user");
        ok(
            &format!("drop_user (round {round})"),
            within("drop_user", a.drop_user(&ctx, &user_ref(&user))).await,
        );
    }
    assert!(
        !h.probe
            .user_exists(user.as_str(), any_host().as_str())
            .await,
        "dropped user {user} still exists"
    );
    assert!(
        !h.probe
            .can_login(user.as_str(), password.expose(), None)
            .await,
        "dropped user {user} can still log in"
    );
    let ctx = h.ctx("get_user");
    let got = ok(
        "get_user",
        within("get_user", a.get_user(&ctx, &user_ref(&user))).await,
    );
    assert!(got.is_none(), "dropped user reported as {got:?}");
    let listed = list_users(h, &PageRequest::default()).await;
    assert!(!listed.items.iter().any(|i| i.name == user));
}

/// After `change_passwords` the old password fails and the new one works.
pub async fn change_password_old_fails_new_works(h: &Harness) {
    if !users_supported(h).await {
        return;
    }
    let (user, old) = fresh_user(h, &[]).await;
    let (other, other_pw) = fresh_user(h, &[]).await;
    let new = h.names.password();
    let ctx = h.ctx("change_passwords");
    let change = PasswordChange {
        user: user_ref(&user),
        password: new.clone(),
    };
    ok(
        "change_passwords",
        within(
            "change_passwords",
            h.driver.admin().change_passwords(&ctx, &[change]),
        )
        .await,
    );
    assert!(
        !h.probe.can_login(user.as_str(), old.expose(), None).await,
        "the old password still works"
    );
    assert!(
        h.probe.can_login(user.as_str(), new.expose(), None).await,
        "the new password does not work"
    );
    assert!(
        h.probe
            .can_login(other.as_str(), other_pw.expose(), None)
            .await,
        "changing one user's password must not touch another's"
    );
}

/// `change_passwords` for a user that does not exist fails with `NotFound`.
pub async fn change_password_missing_user_is_not_found(h: &Harness) {
    if !users_supported(h).await {
        return;
    }
    let user = h.names.user_name();
    let ctx = h.ctx("change_passwords");
    let change = PasswordChange {
        user: user_ref(&user),
        password: h.names.password(),
    };
    let r = within(
        "change_passwords",
        h.driver.admin().change_passwords(&ctx, &[change]),
    )
    .await;
    assert_kind("change_passwords of a missing user", "NotFound", r);
    assert!(
        !h.probe
            .user_exists(user.as_str(), any_host().as_str())
            .await,
        "change_passwords must not create the user"
    );
}

/// `update_attributes`: a new password always works; a rename (when `user_rename` is
/// declared) moves the login and the grants to the new name, otherwise it is `NotSupported`.
pub async fn update_attributes_rename(h: &Harness) {
    if !users_supported(h).await {
        let r = h
            .driver
            .admin()
            .update_attributes(
                &h.ctx("update_attributes"),
                &user_ref(&h.names.user_name()),
                &UserUpdate {
                    name: Some(h.names.user_name()),
                    ..UserUpdate::default()
                },
            )
            .await;
        assert_not_supported(h, "update_attributes", r);
        return;
    }
    let a = h.driver.admin();
    let grants = caps(h).grants && caps(h).databases;
    let db = if grants {
        Some(fresh_db(h).await)
    } else {
        None
    };
    let dbs: Vec<DbName> = db.iter().cloned().collect();
    let (user, _) = fresh_user(h, &dbs).await;

    // A password-only update.
    let pw = h.names.password();
    let ctx = h.ctx("update_attributes");
    let update = UserUpdate {
        password: Some(pw.clone()),
        ..UserUpdate::default()
    };
    ok(
        "update_attributes (password)",
        within(
            "update_attributes",
            a.update_attributes(&ctx, &user_ref(&user), &update),
        )
        .await,
    );
    assert!(
        h.probe.can_login(user.as_str(), pw.expose(), None).await,
        "the password set by update_attributes does not work"
    );

    let renamed = h.names.user_name();
    let update = UserUpdate {
        name: Some(renamed.clone()),
        ..UserUpdate::default()
    };
    let ctx = h.ctx("update_attributes");
    let r = within(
        "update_attributes",
        a.update_attributes(&ctx, &user_ref(&user), &update),
    )
    .await;
    if !caps(h).user_rename {
        assert_not_supported(h, "update_attributes (rename)", r);
        assert!(
            h.probe
                .user_exists(user.as_str(), any_host().as_str())
                .await,
            "a refused rename must leave the user in place"
        );
        return;
    }
    ok("update_attributes (rename)", r);
    let host = any_host();
    assert!(!h.probe.user_exists(user.as_str(), host.as_str()).await);
    assert!(h.probe.user_exists(renamed.as_str(), host.as_str()).await);

    // Rename and password together, back to a third name.
    let third = h.names.user_name();
    let pw3 = h.names.password();
    let update = UserUpdate {
        name: Some(third.clone()),
        password: Some(pw3.clone()),
        ..UserUpdate::default()
    };
    let ctx = h.ctx("update_attributes");
    ok(
        "update_attributes (rename and password)",
        within(
            "update_attributes",
            a.update_attributes(&ctx, &user_ref(&renamed), &update),
        )
        .await,
    );
    assert!(!h.probe.user_exists(renamed.as_str(), host.as_str()).await);
    let on = db.as_ref().map(DbName::as_str);
    assert!(
        h.probe.can_login(third.as_str(), pw3.expose(), on).await,
        "the renamed user cannot log in with the password set with the rename"
    );
    if let Some(db) = &db {
        assert_eq!(
            access_of(h, &user_ref(&third)).await,
            set_of(&[db]),
            "a rename must keep the user's grants"
        );
    }
    let ctx = h.ctx("get_user");
    let got = ok(
        "get_user",
        within("get_user", a.get_user(&ctx, &user_ref(&user))).await,
    );
    assert!(got.is_none(), "the old name still resolves: {got:?}");
}

/// Without a grant a user cannot write to a database; after `grant_access` it can; after
/// `revoke_access` it can neither log in to nor write to it.
pub async fn grant_then_write_and_revoke_denies(h: &Harness) {
    if !grants_supported(h).await || !users_supported(h).await || !databases_supported(h).await {
        return;
    }
    let a = h.driver.admin();
    let db = fresh_db(h).await;
    let (user, pw) = fresh_user(h, &[]).await;
    let (u, p, d) = (user.as_str(), pw.expose(), db.as_str());
    assert!(
        !h.probe.can_write(u, p, d).await,
        "a user without a grant can write to {db}"
    );

    let ctx = h.ctx("grant_access");
    ok(
        "grant_access",
        within(
            "grant_access",
            a.grant_access(&ctx, &user_ref(&user), std::slice::from_ref(&db)),
        )
        .await,
    );
    assert!(
        h.probe.can_login(u, p, Some(d)).await,
        "after grant_access the user cannot log in to {db}"
    );
    assert!(
        h.probe.can_write(u, p, d).await,
        "after grant_access the user cannot write to {db}"
    );

    for round in 0..2 {
        let ctx = h.ctx("revoke_access");
        ok(
            &format!("revoke_access (round {round})"),
            within(
                "revoke_access",
                a.revoke_access(&ctx, &user_ref(&user), &db),
            )
            .await,
        );
    }
    assert!(
        !h.probe.can_write(u, p, d).await,
        "after revoke_access the user can still write to {db}"
    );
    assert!(
        !h.probe.can_login(u, p, Some(d)).await,
        "after revoke_access the user can still log in to {db}"
    );
    assert!(
        h.probe.can_login(u, p, None).await,
        "revoke_access must not lock the user out entirely"
    );
    assert!(access_of(h, &user_ref(&user)).await.is_empty());
}

/// `list_access` (and `get_user`) report exactly the databases granted, at creation and later.
pub async fn list_access_matches_grants(h: &Harness) {
    if !grants_supported(h).await || !users_supported(h).await || !databases_supported(h).await {
        return;
    }
    let a = h.driver.admin();
    let (db1, db2, db3) = (fresh_db(h).await, fresh_db(h).await, fresh_db(h).await);
    let (user, pw) = fresh_user(h, std::slice::from_ref(&db1)).await;
    let who = user_ref(&user);
    assert_eq!(access_of(h, &who).await, set_of(&[&db1]));

    let ctx = h.ctx("grant_access");
    ok(
        "grant_access",
        within(
            "grant_access",
            a.grant_access(&ctx, &who, std::slice::from_ref(&db2)),
        )
        .await,
    );
    assert_eq!(access_of(h, &who).await, set_of(&[&db1, &db2]));
    for (db, expected) in [(&db1, true), (&db2, true), (&db3, false)] {
        assert_eq!(
            h.probe
                .can_write(user.as_str(), pw.expose(), db.as_str())
                .await,
            expected,
            "probe write access to {db} does not match the grants"
        );
    }

    let ctx = h.ctx("get_user");
    let info =
        ok("get_user", within("get_user", a.get_user(&ctx, &who)).await).expect("user exists");
    let ours: BTreeSet<String> = h.names.issued().into_iter().collect();
    let reported: BTreeSet<String> = info
        .databases
        .iter()
        .map(|d| d.name.as_str().to_owned())
        .filter(|n| ours.contains(n))
        .collect();
    assert_eq!(reported, set_of(&[&db1, &db2]), "get_user databases");

    let ctx = h.ctx("revoke_access");
    ok(
        "revoke_access",
        within("revoke_access", a.revoke_access(&ctx, &who, &db1)).await,
    );
    assert_eq!(access_of(h, &who).await, set_of(&[&db2]));
}

/// Granting on a missing database, or to a missing user, fails with `NotFound`.
pub async fn grant_to_missing_database_is_not_found(h: &Harness) {
    if !grants_supported(h).await || !users_supported(h).await || !databases_supported(h).await {
        return;
    }
    let a = h.driver.admin();
    let db = fresh_db(h).await;
    let (user, _) = fresh_user(h, &[]).await;
    let missing_db = h.names.db_name();
    let ctx = h.ctx("grant_access");
    let r = within(
        "grant_access",
        a.grant_access(&ctx, &user_ref(&user), std::slice::from_ref(&missing_db)),
    )
    .await;
    assert_kind("grant_access on a missing database", "NotFound", r);
    assert!(
        !h.probe.database_exists(missing_db.as_str()).await,
        "grant_access must not create the database"
    );

    let missing_user = h.names.user_name();
    let ctx = h.ctx("grant_access");
    let r = within(
        "grant_access",
        a.grant_access(&ctx, &user_ref(&missing_user), std::slice::from_ref(&db)),
    )
    .await;
    assert_kind("grant_access to a missing user", "NotFound", r);
    assert!(
        !h.probe
            .user_exists(missing_user.as_str(), any_host().as_str())
            .await,
        "grant_access must not create the user"
    );
}

async fn is_root_enabled(h: &Harness) -> bool {
    let ctx = h.ctx("is_root_enabled");
    ok(
        "is_root_enabled",
        within("is_root_enabled", h.driver.admin().is_root_enabled(&ctx)).await,
    )
}

async fn disable_root_and_check(h: &Harness, name: &str, password: &Password) {
    let ctx = h.ctx("disable_root");
    ok(
        "disable_root",
        within("disable_root", h.driver.admin().disable_root(&ctx)).await,
    );
    assert!(
        !is_root_enabled(h).await,
        "root still enabled after disable_root"
    );
    assert!(
        !h.probe.can_login(name, password.expose(), None).await,
        "root can still log in with its password after disable_root"
    );
}

/// `enable_root` with a generated password gives a working superuser login that
/// `list_users` hides; `disable_root` takes it away.
pub async fn root_enable_login_disable(h: &Harness) {
    if !root_supported(h).await {
        return;
    }
    let ctx = h.ctx("enable_root");
    let creds = ok(
        "enable_root",
        within("enable_root", h.driver.admin().enable_root(&ctx, None)).await,
    );
    let (name, pw) = (creds.name.as_str(), &creds.password);
    assert!(
        pw.expose().len() >= 16,
        "a generated root password must be at least 16 characters"
    );
    assert!(
        h.probe.can_login(name, pw.expose(), None).await,
        "root '{name}' cannot log in with the returned password"
    );
    let host = any_host();
    assert!(
        h.probe.is_superuser(name, host.as_str()).await,
        "root '{name}' is not a superuser"
    );
    assert!(
        is_root_enabled(h).await,
        "is_root_enabled is false after enable_root"
    );
    if caps(h).users {
        let listed = list_users(h, &PageRequest::default()).await;
        assert!(
            !listed.items.iter().any(|i| i.name == creds.name),
            "list_users must hide root"
        );
    }
    disable_root_and_check(h, name, pw).await;
}

/// `enable_root` with a given password uses it; enabling again with another replaces it.
pub async fn root_enable_with_given_password(h: &Harness) {
    if !root_supported(h).await {
        return;
    }
    let a = h.driver.admin();
    let first = Password::new("Kit-root'pw\"1;--$$").expect("valid password");
    let ctx = h.ctx("enable_root");
    let creds = ok(
        "enable_root",
        within("enable_root", a.enable_root(&ctx, Some(first.clone()))).await,
    );
    assert_eq!(
        creds.password, first,
        "enable_root must use the given password"
    );
    let name = creds.name.as_str();
    assert!(
        h.probe.can_login(name, first.expose(), None).await,
        "root cannot log in with the given password"
    );
    assert!(
        h.probe
            .is_superuser(name, HostPattern::any().as_str())
            .await
    );

    let second = h.names.password();
    let ctx = h.ctx("enable_root");
    let again = ok(
        "enable_root (again)",
        within("enable_root", a.enable_root(&ctx, Some(second.clone()))).await,
    );
    assert_eq!(again.name, creds.name, "root's name must not change");
    assert!(h.probe.can_login(name, second.expose(), None).await);
    assert!(
        !h.probe.can_login(name, first.expose(), None).await,
        "the previous root password still works after enable_root with a new one"
    );
    assert!(is_root_enabled(h).await);
    disable_root_and_check(h, name, &second).await;
}
