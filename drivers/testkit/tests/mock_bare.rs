//! The whole suite against an in-memory driver that declares no optional capability, so every
//! gated kit function takes its `NotSupported` branch.

mod support;

guest_agent_testkit::conformance_tests!(support::bare);
