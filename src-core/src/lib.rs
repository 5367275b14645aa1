//! vipvisor-core: IPAM for LoadBalancer VIPs (pools, reservations, allocations in SQLite)
//! and, in later modules, announcements and the Kubernetes controller.
//!
//! Layers: [`model`] (validated types) → [`ipam`] (pure decisions) → [`store`] (SQLite,
//! transactions, audit) → [`config`] (pools files) → the `vipvisor` binary.

pub mod announce;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod election;
pub mod ipam;
pub mod membership;
pub mod model;
pub mod server;
pub mod store;
