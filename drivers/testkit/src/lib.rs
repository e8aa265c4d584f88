//! Conformance suite for guest-agent drivers.
