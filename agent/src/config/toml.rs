//! Loading the TOML configuration file.
