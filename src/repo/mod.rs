//! Steps 1–2: clone the ML repo, verify it, and name its image.

pub mod augment;
pub mod clone;
pub mod naming;
pub mod verify;
