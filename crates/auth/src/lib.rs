#![doc = include_str!("../README.md")]

pub mod oidc;
pub mod pat;
