//! The driver conformance suite on fresh MariaDB servers.

mod support;

guest_agent_testkit::conformance_tests!(support::make_harness);
