//! The whole suite against an in-memory driver that declares every administrative capability.

mod support;

guest_agent_testkit::conformance_tests!(support::full);
