//! The ML repo: clone it, verify it, name its images, and the FL runtimes' layers that go
//! beside its code (augment).

pub mod augment;
pub mod clone;
pub mod naming;
pub mod verify;
