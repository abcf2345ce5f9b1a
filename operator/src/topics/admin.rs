//! The [`TopicAdmin`] trait the rest of topic management is written against, and the [`Effect`] of
//! one admin call.
//!
//! Only the contract lives here: the rdkafka client is in `kafka_admin`, the pool of clients in
//! `pool`. Implementations decide nothing: what to create, grow, configure or delete comes from
//! `plan`.

use std::collections::BTreeMap;
use std::future::Future;

use super::error::TopicError;
use super::plan::{Described, TopicQuery};

/// What Kafka needs to do for the pipeline's topics. Methods are `async` with a `Send` future (the
/// controller's reconcile future must be `Send`); implementations may write `async fn`.
pub trait TopicAdmin: Sync {
    /// The queried topics that exist, with the queried config keys' effective values, and the
    /// brokers the cluster lists, as the same metadata answers tell them.
    fn describe(
        &self,
        query: &TopicQuery,
    ) -> impl Future<Output = Result<Described, TopicError>> + Send;

    /// Creates a topic; `replication_factor: None` uses the broker default. A topic that already
    /// exists (someone raced us) is [`Effect::AlreadyInPlace`].
    fn create(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: Option<i16>,
        config: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<Effect, TopicError>> + Send;

    /// Grows a topic to `to` partitions in total.
    fn add_partitions(
        &self,
        name: &str,
        to: i32,
    ) -> impl Future<Output = Result<Effect, TopicError>> + Send;

    /// Sets these config keys and keeps every other config of the topic.
    fn alter_config(
        &self,
        name: &str,
        set: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<Effect, TopicError>> + Send;

    /// Deletes a topic and its records. A topic that is already gone is [`Effect::AlreadyInPlace`].
    fn delete(&self, name: &str) -> impl Future<Output = Result<Effect, TopicError>> + Send;
}

/// What an admin call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// The change was made.
    Applied,
    /// Nothing to do: the topic was created by someone else first, or was already deleted.
    AlreadyInPlace,
}
