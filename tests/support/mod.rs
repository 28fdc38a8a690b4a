//! What the tests and the load benches share, in one place: the in-process fake API server,
//! throwaway PostgreSQL servers set up as the README says, `clusterscope serve` as its own
//! process, the fixtures and the kubectl oracle, and finding the programs they need. A test
//! file says `mod support;`; a bench `#[path = "../tests/support/mod.rs"] mod support;`.
#![allow(dead_code)]

pub mod events;
pub mod fake_apiserver;
pub mod fixtures;
pub mod load;
pub mod otlp;
pub mod postgres;
pub mod serve;
pub mod tools;
