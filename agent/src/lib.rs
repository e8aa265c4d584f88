//! # guest-agent
//!
//! The agent runtime: configuration, the transport-agnostic dispatcher of Trove's guest agent
//! operations, transports (HTTPS), heartbeats, and the application that wires a datastore
//! driver to them.

pub mod app;
pub mod backup;
pub mod cli;
pub mod config;
pub mod heartbeat;
pub mod rpc;
pub mod shutdown;
pub mod state;
pub mod telemetry;
pub mod transport;
