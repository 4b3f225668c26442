//! flops-image-builder: a daemonless OCI image assembler for Oakestra FLOps learner images.
//!
//! Modules follow the data flow (see ../shared/DESIGN.md): `repo` clones and verifies the ML
//! repo, `deps` reads and doctors its dependency spec, `oci` writes layers, assembles images
//! and talks to registries, `notify` tells the FLOps manager (MQTT) and the observer
//! (TCP), and `pipeline` ties the phases together.

pub mod deps;
pub mod error;
pub mod notify;
pub mod oci;
pub mod pipeline;
pub mod progress;
pub mod repo;
