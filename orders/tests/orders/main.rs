//! Integration tests of orderpipe-orders through its public API only: one test binary (one link) for
//! every behaviour the worker runtime, the load generator and the docs rely on.

mod docs;
mod generator;
mod hostile;
mod notify;
mod properties;
mod schemas;
mod status;
mod support;
mod validate;
