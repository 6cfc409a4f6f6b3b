//! What `/metrics` reports, in the Prometheus text format: one registry per running server (so
//! servers in one test process do not mix their counts), fed by the rooms that see each event.
//!
//! Labels are bounded sets the server chooses (route templates, states, compute environments,
//! status classes), never a user's input, so no scrape grows without bound and no label can
//! carry a task's name, a path segment or a secret.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tresor_domain::TaskState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    /// The route's template (`/ga4gh/tes/v1/tasks/{id}`), or `unmatched`.
    route: String,
    /// `2xx`, `4xx`, …
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvLabel {
    env: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// HTTP and poll latencies: 1 ms to about 16 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Queue waits and run times: 10 ms to about 2.3 days.
fn task_time_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 4.0, 14))
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    tasks: Family<StateLabel, Gauge>,
    queue_wait: Histogram,
    run_time: Family<StateLabel, Histogram>,
    http: Family<RouteLabels, Histogram, fn() -> Histogram>,
    secret_deliveries: Counter,
    secrets_delivered: Counter,
    auth_failures: Family<KindLabel, Counter>,
    poll: Family<EnvLabel, Histogram, fn() -> Histogram>,
}

/// The server's metrics; cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tresor");
        let tasks = Family::<StateLabel, Gauge>::default();
        registry.register(
            "tasks",
            "Tasks by TES state, as the database holds them at the scrape",
            tasks.clone(),
        );
        let queue_wait = task_time_histogram();
        registry.register(
            "task_queue_wait_seconds",
            "From a task's creation to the start of its work",
            queue_wait.clone(),
        );
        let run_time =
            Family::<StateLabel, Histogram>::new_with_constructor(task_time_histogram as fn() -> _);
        registry.register(
            "task_run_seconds",
            "From the start of a task's work to its end, by the state it ended in",
            run_time.clone(),
        );
        let http = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (to the response's head), by route template and status class",
            http.clone(),
        );
        let secret_deliveries = Counter::default();
        registry.register(
            "secret_deliveries",
            "Starting tasks that were handed their declared secrets",
            secret_deliveries.clone(),
        );
        let secrets_delivered = Counter::default();
        registry.register(
            "secrets_delivered",
            "Secret values handed to starting tasks (one per declared secret)",
            secrets_delivered.clone(),
        );
        let auth_failures = Family::<KindLabel, Counter>::default();
        registry.register(
            "auth_failures",
            "Requests refused for a missing or bad credential (user: 401 to a user credential; task: a worker's task credential)",
            auth_failures.clone(),
        );
        let poll = Family::<EnvLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "compute_poll_seconds",
            "One poll of a compute environment that is polled for its tasks' state (SLURM: squeue and sacct)",
            poll.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                tasks,
                queue_wait,
                run_time,
                http,
                secret_deliveries,
                secrets_delivered,
                auth_failures,
                poll,
            }),
        }
    }

    /// Sets the tasks-by-state gauges; states missing from `counts` are zero.
    pub fn set_task_counts(&self, counts: &[(TaskState, i64)]) {
        for state in TaskState::ALL {
            let n = counts
                .iter()
                .find(|(s, _)| *s == state)
                .map_or(0, |(_, n)| *n);
            self.inner
                .tasks
                .get_or_create(&StateLabel {
                    state: state.as_str(),
                })
                .set(n);
        }
    }

    pub fn observe_queue_wait(&self, wait: Duration) {
        self.inner.queue_wait.observe(wait.as_secs_f64());
    }

    pub fn observe_run_time(&self, ended_as: TaskState, run: Duration) {
        self.inner
            .run_time
            .get_or_create(&StateLabel {
                state: ended_as.as_str(),
            })
            .observe(run.as_secs_f64());
    }

    /// One answered request. `route` must be a route template or `unmatched`, never a raw path.
    pub fn observe_http(&self, method: &str, route: &str, status: u16, took: Duration) {
        let status = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.inner
            .http
            .get_or_create(&RouteLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .observe(took.as_secs_f64());
    }

    /// A starting task was handed `count` secret values.
    pub fn secrets_delivered(&self, count: usize) {
        self.inner.secret_deliveries.inc();
        self.inner
            .secrets_delivered
            .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
    }

    /// A user credential was refused.
    pub fn user_auth_failed(&self) {
        self.inner
            .auth_failures
            .get_or_create(&KindLabel { kind: "user" })
            .inc();
    }

    /// A worker's task credential was refused.
    pub fn task_auth_failed(&self) {
        self.inner
            .auth_failures
            .get_or_create(&KindLabel { kind: "task" })
            .inc();
    }

    pub fn observe_poll(&self, env: &str, took: Duration) {
        self.inner
            .poll
            .get_or_create(&EnvLabel {
                env: env.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition of everything.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry) {
            tracing::error!(error = %e, "encoding the metrics");
        }
        text
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_in_the_exposition_with_its_labels() {
        let m = Metrics::new();
        m.set_task_counts(&[(TaskState::Running, 3)]);
        m.observe_queue_wait(Duration::from_millis(20));
        m.observe_run_time(TaskState::Complete, Duration::from_secs(2));
        m.observe_http(
            "GET",
            "/ga4gh/tes/v1/tasks/{id}",
            404,
            Duration::from_millis(3),
        );
        m.secrets_delivered(2);
        m.user_auth_failed();
        m.observe_poll("hpc", Duration::from_millis(40));
        let text = m.encode();
        for line in [
            "tresor_tasks{state=\"RUNNING\"} 3",
            "tresor_tasks{state=\"QUEUED\"} 0",
            "tresor_task_queue_wait_seconds_count 1",
            "tresor_task_run_seconds_count{state=\"COMPLETE\"} 1",
            "tresor_http_request_duration_seconds_count{method=\"GET\",route=\"/ga4gh/tes/v1/tasks/{id}\",status=\"4xx\"} 1",
            "tresor_secret_deliveries_total 1",
            "tresor_secrets_delivered_total 2",
            "tresor_auth_failures_total{kind=\"user\"} 1",
            "tresor_compute_poll_seconds_count{env=\"hpc\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
