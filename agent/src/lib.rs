//! guest-agent library.
