//! flops-image-builder: a daemonless OCI image assembler for Oakestra FLOps learner images.
//!
//! Modules follow the data flow (see ../shared/DESIGN.md): `oci` writes layers, assembles
//! images and talks to registries.

pub mod error;
pub mod oci;
