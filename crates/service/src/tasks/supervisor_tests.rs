//! Supervisor unit tests against a fake backend (placeholder; filled below).
