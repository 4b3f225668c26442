//! Step 3 onwards: dependency specs, the doctor, and (later) resolution and wheel layers.

pub mod abi;
pub mod doctor;
pub mod fetch;
pub mod imports;
pub mod install;
pub mod layers;
pub mod poetry;
pub mod pylock;
pub mod resolve;
pub mod sandbox;
pub mod sdist;
pub mod spec;
pub mod wheel;
