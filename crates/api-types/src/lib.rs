#![doc = include_str!("../README.md")]

pub mod error;
pub mod internal;
pub mod platform;
pub mod tes;
pub mod wes;

pub use error::ErrorResponse;
