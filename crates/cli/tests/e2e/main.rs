//! End-to-end tests of the `georep` binary against real services: local folders, two
//! Azurite instances and moto S3 as regions, PostgreSQL clusters, the daemon as a child
//! process. One test target: a new capability adds a file here and a `mod` line.

mod common;

mod concierge;
mod concierge_fleet;

mod backup;
mod cli;
mod db;
mod failover;
mod hardening;
mod mariadb;
mod mariadb_failover;
mod relay;
mod relay_kinds;
mod secrets;
mod serve;
