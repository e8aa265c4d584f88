//! Assertion helpers shared by the kit functions.
