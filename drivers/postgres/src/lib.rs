//! PostgreSQL driver for guest-agent.
