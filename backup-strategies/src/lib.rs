//! Backup strategies and the streaming backup pipeline. Not implemented yet.
