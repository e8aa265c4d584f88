//! MySQL/MariaDB driver for guest-agent. Not implemented yet: the registry does not list
//! `mysql` or `mariadb` until it is.
