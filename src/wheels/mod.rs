//! Wheels into layers: which wheel of a lock each platform gets (`pylock`, by the tags of
//! `tags`), fetching them (`fetch`), installing them into a layer as an installer would
//! (`install`, PEP 427) with their bytecode (`bytecode`, compiled once per wheel and cache:
//! `compiled`), planning the dependency layers so they are shared (`layers`), and what
//! a lazy node prefetches of them (`prefetch`).

pub mod bytecode;
pub mod compiled;
pub mod fetch;
pub mod install;
pub mod layers;
pub mod prefetch;
pub mod pylock;
pub mod tags;
