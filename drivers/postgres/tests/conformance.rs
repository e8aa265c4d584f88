//! The conformance kit against a real PostgreSQL 15, each test on a fresh server prepared
//! through the driver.

mod support;

guest_agent_testkit::conformance_tests!(support::make_harness);
