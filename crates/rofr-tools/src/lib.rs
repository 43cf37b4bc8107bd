//! What drives a broker from outside, as a user or a provider would: the HTTP client,
//! provider agents that answer offers and requests for quotes, the demo that runs a
//! deal's providers against a live broker, and the benchmarks. The broker itself (in
//! `rofr-server`) needs none of it.

pub mod agent;
pub mod aws;
pub mod bench;
pub mod bench_report;
pub mod bench_tlog;
pub mod client;
pub mod demo;
pub mod export;
