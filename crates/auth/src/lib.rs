#![doc = include_str!("../README.md")]

pub mod client_credentials;
pub mod oidc;
pub mod pat;
#[cfg(test)]
mod proptests;
