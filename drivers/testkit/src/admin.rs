//! Conformance functions for the `admin` group.

use crate::Harness;

/// `create_database_visible_to_probe`.
pub async fn create_database_visible_to_probe(h: &Harness) {
    let _ = h;
    unimplemented!("create_database_visible_to_probe");
}

/// `create_database_is_idempotent`.
pub async fn create_database_is_idempotent(h: &Harness) {
    let _ = h;
    unimplemented!("create_database_is_idempotent");
}

/// `drop_database_idempotent`.
pub async fn drop_database_idempotent(h: &Harness) {
    let _ = h;
    unimplemented!("drop_database_idempotent");
}

/// `list_databases_paginates`.
pub async fn list_databases_paginates(h: &Harness) {
    let _ = h;
    unimplemented!("list_databases_paginates");
}

/// `create_user_then_login`.
pub async fn create_user_then_login(h: &Harness) {
    let _ = h;
    unimplemented!("create_user_then_login");
}

/// `create_existing_user_is_already_exists`.
pub async fn create_existing_user_is_already_exists(h: &Harness) {
    let _ = h;
    unimplemented!("create_existing_user_is_already_exists");
}

/// `get_user_missing_is_none`.
pub async fn get_user_missing_is_none(h: &Harness) {
    let _ = h;
    unimplemented!("get_user_missing_is_none");
}

/// `list_users_hides_admin_and_paginates`.
pub async fn list_users_hides_admin_and_paginates(h: &Harness) {
    let _ = h;
    unimplemented!("list_users_hides_admin_and_paginates");
}

/// `drop_user_then_login_fails`.
pub async fn drop_user_then_login_fails(h: &Harness) {
    let _ = h;
    unimplemented!("drop_user_then_login_fails");
}

/// `change_password_old_fails_new_works`.
pub async fn change_password_old_fails_new_works(h: &Harness) {
    let _ = h;
    unimplemented!("change_password_old_fails_new_works");
}

/// `change_password_missing_user_is_not_found`.
pub async fn change_password_missing_user_is_not_found(h: &Harness) {
    let _ = h;
    unimplemented!("change_password_missing_user_is_not_found");
}

/// `update_attributes_rename`.
pub async fn update_attributes_rename(h: &Harness) {
    let _ = h;
    unimplemented!("update_attributes_rename");
}

/// `grant_then_write_and_revoke_denies`.
pub async fn grant_then_write_and_revoke_denies(h: &Harness) {
    let _ = h;
    unimplemented!("grant_then_write_and_revoke_denies");
}

/// `list_access_matches_grants`.
pub async fn list_access_matches_grants(h: &Harness) {
    let _ = h;
    unimplemented!("list_access_matches_grants");
}

/// `grant_to_missing_database_is_not_found`.
pub async fn grant_to_missing_database_is_not_found(h: &Harness) {
    let _ = h;
    unimplemented!("grant_to_missing_database_is_not_found");
}

/// `root_enable_login_disable`.
pub async fn root_enable_login_disable(h: &Harness) {
    let _ = h;
    unimplemented!("root_enable_login_disable");
}

/// `root_enable_with_given_password`.
pub async fn root_enable_with_given_password(h: &Harness) {
    let _ = h;
    unimplemented!("root_enable_with_given_password");
}
