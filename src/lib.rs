//! flops-image-builder: a daemonless OCI image assembler for Oakestra FLOps learner images.
//!
//! Modules follow the data flow (see ../shared/DESIGN.md): `repo` clones and verifies the ML
//! repo, `model` fetches a trained MLflow model, `deps` reads and doctors dependency specs, `oci` writes layers, assembles images
//! and talks to registries, `notify` tells the FLOps manager (MQTT) and the observer
//! (TCP), and `pipeline` ties the phases together.

pub mod deps;
pub mod error;
pub mod model;
pub mod notify;
pub mod oci;
pub mod paths;
pub mod pipeline;
pub mod progress;
pub mod repo;
pub mod sbom;
