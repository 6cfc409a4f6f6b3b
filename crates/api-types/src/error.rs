//! The error body of the GA4GH APIs.

use serde::{Deserialize, Serialize};

/// WES 1.1's `ErrorResponse`, used for TES as well because TES 1.1 defines no error schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorResponse {
    /// What went wrong and, for a 4xx, what to fix.
    pub msg: String,
    /// The HTTP status code, repeated in the body as WES specifies.
    pub status_code: u16,
}
