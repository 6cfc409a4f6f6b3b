//! Waiting for a task and following its output: `task run`, `task wait`, `task logs` and the
//! readable `task get`.
//!
//! A running task's worker reports each executor's output so far once a second (whole lines,
//! redacted), so following is polling the task's full view and printing what is new.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use tresor_api_types::tes::{TesExecutorLog, TesState, TesTask, TesView};
use tresor_client::TesClient;

/// How `task wait` and `task run` exit for a task that did not complete.
pub const EXIT_SYSTEM_ERROR: u8 = 125;
pub const EXIT_CANCELED: u8 = 130;

/// The exit status that stands for a finished task: 0 when it completed, the failing
/// executor's exit code (1 if it had none) for EXECUTOR_ERROR, 125 for SYSTEM_ERROR and 130 for
/// CANCELED (and PREEMPTED).
pub fn exit_status(task: &TesTask) -> u8 {
    match task.state {
        Some(TesState::Complete) => 0,
        Some(TesState::ExecutorError) => {
            let code = last_log(task)
                .and_then(|log| log.logs.iter().rev().find(|l| l.exit_code != 0))
                .map_or(1, |l| l.exit_code);
            u8::try_from(code).ok().filter(|c| *c != 0).unwrap_or(1)
        }
        Some(TesState::Canceled | TesState::Preempted) => EXIT_CANCELED,
        _ => EXIT_SYSTEM_ERROR,
    }
}

fn last_log(task: &TesTask) -> Option<&tresor_api_types::tes::TesTaskLog> {
    task.logs.as_ref().and_then(|logs| logs.last())
}

/// What of each executor's stdout and stderr has been printed.
#[derive(Default)]
struct Printed {
    /// Per executor index: the stdout and stderr seen so far.
    seen: BTreeMap<usize, [String; 2]>,
}

impl Printed {
    /// Prints what `task`'s executor logs hold beyond what was printed: stdout to stdout,
    /// stderr to stderr. A log tail that moved on past what was printed is marked as a gap.
    fn print_new(&mut self, task: &TesTask) {
        let Some(log) = last_log(task) else {
            return;
        };
        for (index, executor) in log.logs.iter().enumerate() {
            let seen = self.seen.entry(index).or_default();
            for (stream, now) in [(0, &executor.stdout), (1, &executor.stderr)] {
                let now = now.as_deref().unwrap_or_default();
                let new = unseen(&seen[stream], now);
                if !new.is_empty() {
                    write_stream(stream, new);
                }
                now.clone_into(&mut seen[stream]);
            }
        }
    }
}

/// The part of `now` (a log tail) that follows what `before` (an earlier tail) showed.
fn unseen<'a>(before: &str, now: &'a str) -> &'a str {
    if let Some(rest) = now.strip_prefix(before) {
        return rest;
    }
    // The tail was cut at its front: the longest start of `now` that ends `before` is what
    // was seen. Tails end at whole lines, so only line ends need checking.
    let last = before.as_bytes().last().copied();
    (1..=before.len().min(now.len()))
        .rev()
        .filter(|&k| now.as_bytes().get(k - 1).copied() == last && now.is_char_boundary(k))
        .find(|&k| before.ends_with(&now[..k]))
        .map_or(now, |k| &now[k..])
}

fn write_stream(stream: usize, text: &str) {
    if stream == 0 {
        crate::output::raw(text);
    } else {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(text.as_bytes());
        let _ = err.flush();
    }
}

/// A spinner on standard error naming the task's state while it waits, only when standard
/// error is a terminal.
struct Waiting {
    bar: Option<indicatif::ProgressBar>,
}

impl Waiting {
    fn new(id: &str) -> Waiting {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {prefix} {msg} ({elapsed})")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.set_prefix(id.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Waiting { bar }
    }

    fn state(&self, task: &TesTask) {
        if let Some(bar) = &self.bar {
            let state = task.state.map_or("UNKNOWN", TesState::as_str);
            let what = match task.state {
                Some(TesState::Queued) => "waiting for a slot",
                Some(TesState::Initializing) => "pulling images and staging inputs",
                Some(TesState::Running) => "running",
                _ => "",
            };
            bar.set_message(format!("{state} {what}"));
        }
    }

    /// Runs `print` with the spinner out of the way.
    fn suspend(&self, print: impl FnOnce()) {
        match &self.bar {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Polls `id` until it ends, printing its output as it comes when `follow` is set. Ctrl-C
/// stops waiting (and cancels the task first when `cancel_on_interrupt`).
pub async fn wait(
    client: &TesClient,
    id: &str,
    follow: bool,
    cancel_on_interrupt: bool,
) -> anyhow::Result<TesTask> {
    let waiting = Waiting::new(id);
    let mut printed = Printed::default();
    let mut pause = Duration::from_millis(100);
    let started = Instant::now();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        // BASIC holds the executors' exit codes, which the exit status needs; FULL adds output.
        let view = if follow {
            TesView::Full
        } else {
            TesView::Basic
        };
        let task = client
            .get_task(id, view)
            .await
            .with_context(|| format!("reading task {id}"))?;
        waiting.state(&task);
        if follow {
            waiting.suspend(|| printed.print_new(&task));
        }
        if task.state.is_some_and(TesState::is_terminal) {
            waiting.finish();
            return Ok(task);
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = &mut interrupted => {
                waiting.finish();
                if cancel_on_interrupt {
                    client.cancel_task(id).await.with_context(|| format!("canceling task {id}"))?;
                    anyhow::bail!("interrupted: canceled task {id}");
                }
                anyhow::bail!("interrupted; task {id} goes on (`tresor task cancel {id}` stops it)");
            }
        }
        // Quick at first, for short tasks; once a second for long ones.
        if started.elapsed() > Duration::from_secs(2) {
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}

/// A task's output once: each executor's stdout and stderr as the task holds them now.
pub fn print_logs(task: &TesTask) {
    Printed::default().print_new(task);
}

/// The system logs of a task that did not complete, on standard error.
pub fn explain_end(task: &TesTask) {
    if task.state == Some(TesState::Complete) {
        return;
    }
    let state = task.state.map_or("UNKNOWN", TesState::as_str);
    let mut err = std::io::stderr().lock();
    let id = task.id.as_deref().unwrap_or_default();
    let _ = writeln!(err, "task {} ended {state}", printable(id));
    if let Some(lines) = last_log(task).and_then(|l| l.system_logs.as_ref()) {
        for line in lines {
            let _ = writeln!(err, "  {}", printable(line));
        }
    }
}

/// `text` with control characters escaped: another member's task name, tags, command or
/// system logs must not move the cursor or rewrite what the terminal shows.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The task as a person reads it.
pub fn describe(task: &TesTask) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: &str| {
        if !value.is_empty() {
            out.push_str(&format!("{key:<13}{}\n", printable(value)));
        }
    };
    line("id", task.id.as_deref().unwrap_or_default());
    line("name", task.name.as_deref().unwrap_or_default());
    line("state", task.state.map_or("UNKNOWN", TesState::as_str));
    line("created", task.creation_time.as_deref().unwrap_or_default());
    let log = last_log(task);
    line(
        "started",
        log.and_then(|l| l.start_time.as_deref())
            .unwrap_or_default(),
    );
    line(
        "ended",
        log.and_then(|l| l.end_time.as_deref()).unwrap_or_default(),
    );
    if let Some(r) = &task.resources {
        let mut parts = Vec::new();
        if let Some(c) = r.cpu_cores {
            parts.push(format!("{c} cpu"));
        }
        if let Some(m) = r.ram_gb {
            parts.push(format!("{m} GB memory"));
        }
        if let Some(d) = r.disk_gb {
            parts.push(format!("{d} GB disk"));
        }
        line("resources", &parts.join(", "));
    }
    let tags: Vec<String> = task
        .tags
        .iter()
        .flatten()
        .map(|(k, v)| {
            if v.is_empty() {
                k.clone()
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    line("tags", &tags.join(" "));
    for input in task.inputs.iter().flatten() {
        let from = input.url.as_deref().unwrap_or(if input.content.is_some() {
            "(content)"
        } else {
            ""
        });
        line("input", &format!("{} <- {from}", input.path));
    }
    for output in task.outputs.iter().flatten() {
        line("output", &format!("{} -> {}", output.path, output.url));
    }
    let logs: &[TesExecutorLog] = log.map_or(&[], |l| l.logs.as_slice());
    for (index, executor) in task.executors.iter().enumerate() {
        line(
            &format!("executor {index}"),
            &format!("{} {}", executor.image, shell_words(&executor.command)),
        );
        if let Some(run) = logs.get(index) {
            let how = match &run.end_time {
                Some(_) => format!("exit code {}", run.exit_code),
                None => "running".to_owned(),
            };
            line("", &how);
        }
    }
    if let Some(lines) = log.and_then(|l| l.system_logs.as_ref()) {
        for l in lines {
            line("system log", l);
        }
    }
    for file in log.map_or(&[][..], |l| l.outputs.as_slice()) {
        line(
            "delivered",
            &format!("{} ({} bytes)", file.url, file.size_bytes),
        );
    }
    out.trim_end().to_owned()
}

/// A command line as a shell would take it back: words with spaces or quotes are quoted.
fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,+@%".contains(&b))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_shows_only_what_is_new_even_after_its_front_was_cut() {
        assert_eq!(unseen("", "a\nb\n"), "a\nb\n");
        assert_eq!(unseen("a\n", "a\nb\n"), "b\n");
        assert_eq!(unseen("1\n2\n3\n", "2\n3\n4\n"), "4\n");
        assert_eq!(unseen("x\n", "y\n"), "y\n", "no overlap: everything is new");
        assert_eq!(unseen("é\n", "é\nü\n"), "ü\n");
    }

    #[test]
    fn exit_statuses_follow_the_end_state() {
        let mut task = TesTask {
            state: Some(TesState::ExecutorError),
            logs: Some(vec![tresor_api_types::tes::TesTaskLog {
                logs: vec![
                    TesExecutorLog {
                        exit_code: 0,
                        ..Default::default()
                    },
                    TesExecutorLog {
                        exit_code: 3,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }]),
            ..TesTask::default()
        };
        assert_eq!(exit_status(&task), 3);
        task.state = Some(TesState::Complete);
        assert_eq!(exit_status(&task), 0);
        task.state = Some(TesState::SystemError);
        assert_eq!(exit_status(&task), EXIT_SYSTEM_ERROR);
        task.state = Some(TesState::Canceled);
        assert_eq!(exit_status(&task), EXIT_CANCELED);
    }

    #[test]
    fn another_members_fields_cannot_drive_the_terminal() {
        let task = TesTask {
            name: Some("ok\r\x1b[2Kharmless".to_owned()),
            ..TesTask::default()
        };
        let shown = describe(&task);
        assert!(
            !shown.contains('\x1b') && !shown.contains('\r'),
            "{shown:?}"
        );
        assert!(shown.contains("\\u{1b}[2K"), "{shown:?}");
    }

    #[test]
    fn commands_are_shown_as_a_shell_would_take_them() {
        let words = ["sh", "-c", "echo it's done"].map(String::from);
        assert_eq!(shell_words(&words), "sh -c 'echo it'\\''s done'");
    }
}
