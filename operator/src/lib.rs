//! orderpipe-operator: reconciles OrderPipelines into Kafka topics, stage workloads, autoscalers,
//! services, monitors and a truthful status.
//!
//! The reconcile is a straight script: observe -> validate -> desired -> plan -> write -> status.
//! Only the modules that say so in their header do I/O (`controller` and `secrets` read, `writer`
//! and `recorder` write to Kubernetes, `topics::kafka_admin` and `lag::kafka` talk to Kafka,
//! `capabilities` discovers); `model`, `desired`, `cached_child`, `children`, `child_index`, `child_plan`,
//! `topics::plan`, `lag::offsets`, `rotation`, `scale_to_zero` and `status` are pure and tested without a
//! cluster.

pub mod cached_child;
pub mod capabilities;
pub mod child_index;
pub mod child_plan;
pub mod children;
pub mod controller;
pub mod desired;
pub mod egress;
pub mod error;
pub mod events;
pub mod external_metrics;
pub mod growth;
pub mod heap;
pub mod http;
pub mod lag;
pub mod metrics;
pub mod model;
pub mod recorder;
pub mod rotation;
pub mod scale_to_zero;
pub mod secrets;
pub mod settings;
pub mod status;
pub mod topics;
pub mod ttl_cache;
pub mod writer;
