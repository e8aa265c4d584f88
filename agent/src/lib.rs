//! # guest-agent
//!
//! The agent runtime: configuration, the transport-agnostic dispatcher of Trove's guest agent
//! operations, transports (HTTPS), heartbeats, and the application that wires a datastore
//! driver to them.

pub mod config;
pub mod rpc;
pub mod state;
pub mod telemetry;
pub mod transport;
