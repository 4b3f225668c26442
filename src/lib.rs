//! flops-image-builder: a daemonless OCI image assembler for Oakestra FLOps: the learner and
//! aggregator images of an ML repo, and images serving a trained MLflow model.
//!
//! Rooms in the data flow's order (../shared/DESIGN.md), each using only those before it
//! (`tests/house.rs` holds the order): `error`, `progress`, `paths` (reading a checkout
//! confined to its root); `oci` (layers, images, the registry client, referrers); `notify`
//! (MQTT, the project observer); `spec` (the repo's dependency specs and the doctor);
//! `wheels` (a lock's wheels per platform, fetched and installed into layers); `pool` (the
//! fleet's shared cache in the registry); `resolve` (uv, sdists, the package-code sandbox);
//! `repo` (clone, verify, naming, the runtimes' layers); `model` (a trained MLflow model);
//! `sbom` (SPDX documents); `pipeline` (the phases, and one short file per build plan).

pub mod error;
pub mod model;
pub mod notify;
pub mod oci;
pub mod paths;
pub mod pipeline;
pub mod pool;
pub mod progress;
pub mod repo;
pub mod resolve;
pub mod sbom;
pub mod spec;
pub mod wheels;
