//! Step 3 onwards: dependency specs, the doctor, and (later) resolution and wheel layers.

pub mod doctor;
pub mod install;
pub mod pylock;
pub mod spec;
pub mod wheel;
