//! OCI images without a daemon or root: names and workspace policies, pulls into a
//! digest-verified cache shared by a host's tasks, and layers unpacked safely into read-only
//! roots that the sandbox shows as `/`.

pub mod cache;
pub mod name;
pub mod unpack;

pub use cache::{CacheSettings, ImageCache, PullError, ReadyImage, RegistryLogin, RunConfig};
pub use name::{ImageName, ImagePolicy, PullPlan};
