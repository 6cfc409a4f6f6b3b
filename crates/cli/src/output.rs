//! The CLI's only way to write to standard output.
#![allow(clippy::print_stdout)]

use std::io::Write;

/// Prints one line and flushes, so a parent process reading the pipe sees it at once.
pub fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Prints text as it is (a task's output), and flushes.
pub fn raw(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Prints a value as pretty JSON.
pub fn json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => line(&text),
        Err(e) => line(&format!("{{\"error\": \"{e}\"}}")),
    }
}
