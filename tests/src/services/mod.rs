//! Direct access to the services the agent manages, bypassing the agent, so tests verify
//! results independently of the code path under test.

pub mod postgres;
