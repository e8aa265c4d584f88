//! # guest-agent-api
//!
//! The one crate a datastore driver author depends on: the [`Driver`] trait and its operation
//! groups ([`Lifecycle`], [`Admin`], [`ConfigApply`], [`Health`], [`Replication`],
//! [`BackupHooks`]), validated identifier types ([`ident`]), typed positions ([`position`]),
//! the [`Registry`] that maps Trove manager names to drivers, the [`runtime`] that runs the
//! datastore server, and [`fsutil`], safe file handling for a datastore's OS user.
//!
//! A driver implements every group; operations a datastore cannot do return
//! [`Error::NotSupported`] and are left out of [`Capabilities`]. The conformance kit
//! (`guest-agent-testkit`) checks both directions.
//!
//! ```no_run
//! use std::sync::Arc;
//! use guest_agent_api::{DriverFactory, DriverSettings, Registry, Driver, Result};
//! use futures::future::BoxFuture;
//!
//! fn build(settings: DriverSettings) -> BoxFuture<'static, Result<Arc<dyn Driver>>> {
//!     Box::pin(async move {
//!         // A real driver builds its connection settings here, without connecting.
//!         Err(guest_agent_api::Error::Internal(format!("no driver for {}", settings.manager)))
//!     })
//! }
//!
//! let mut registry = Registry::new();
//! registry.register(DriverFactory { managers: &["mydb"], build }).unwrap();
//! assert!(registry.get("postgresql").is_err());
//! ```

pub mod admin;
pub mod backup;
pub mod capability;
pub mod config;
pub mod context;
pub mod driver;
pub mod error;
pub mod fsutil;
pub mod health;
pub mod ident;
pub mod lifecycle;
pub mod position;
pub mod registry;
pub mod replication;
pub mod runtime;

pub use admin::Admin;
pub use async_trait::async_trait;
pub use backup::BackupHooks;
pub use capability::Capabilities;
pub use config::ConfigApply;
pub use context::OpContext;
pub use driver::{Driver, DriverInfo};
pub use error::{BoxError, Error, Result};
pub use health::Health;
pub use lifecycle::{DatastoreStatus, Lifecycle, StopMode};
pub use position::Position;
pub use registry::{DriverFactory, DriverSettings, Registry};
pub use replication::Replication;
