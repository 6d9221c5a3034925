//! Services: the model the datapath is programmed with, and the one
//! translation from Kubernetes objects into it.

pub mod affinity;
pub mod api;
pub mod manifest;
pub mod model;
pub mod program;
pub mod runner;
pub mod source;
pub mod translate;
pub mod writer;

pub use model::*;
pub use translate::{translate, Context, Translation};

#[cfg(test)]
mod program_tests;
#[cfg(test)]
mod tests;
