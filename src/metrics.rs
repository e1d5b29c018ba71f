//! Prometheus metrics: the registry of every metric the server exports at `GET /metrics`,
//! the recording helpers handlers and chores call, and the scrape-time collector that
//! reads queue and job figures from the registry's read indexes.
//!
//! Built on `prometheus-client` (the Prometheus project's own Rust client): its registry
//! is a value, not a process-wide global, so every server (and every in-process test
//! server) owns its own metrics; label sets are typed structs; histograms and counters
//! are lock-free atomics; and a [`Collector`] computes gauges only when scraped. The
//! `metrics` facade + `metrics-exporter-prometheus` was the alternative, but its
//! recorder is global state.
//!
//! What this does not do: read the actors. Queue depth, oldest wait and jobs by state are
//! read at scrape time from the registry's indexes ([`Jobs::queue_summaries`],
//! [`Jobs::state_counts`]) under one brief read lock; they visit queues with unfinished
//! jobs, never every job.
//!
//! Cardinality: every label value is bounded. `route` is the matched route template
//! (`/v1/job/{id}`, not the raw path; `unmatched` for no route), `method` a standard
//! HTTP method's name or `other` (hyper accepts any token as a method), `status` an HTTP
//! status. `queue` is the queue's name for at most `--metrics-queues` queues (default
//! 100) and `other` for the rest (summed, oldest wait: the largest). Queues agents serve
//! (advertised, or listed in an agent's record) come first: one seen when every label is
//! taken takes the label of a queue no agent serves, so clients submitting to invented
//! queue names cannot push real queues into `other`; the others get labels first come,
//! first served while some are free. `state` is one of Testflinger's job states, or
//! `other` for a label an agent invented.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::actors::registry::Jobs;
use crate::model::{FastMap, FastSet, Name};

/// The label value for queues beyond the cap (and for job states no one defined).
pub const OTHER: &str = "other";

/// Testflinger's job states (`job_state`), plus flinger's `running`: the values the
/// `state` label may take besides `other`.
const STATES: &[&str] = &[
    "waiting",
    "resubmitted",
    "running",
    "setup",
    "provision",
    "firmware_update",
    "test",
    "allocate",
    "allocated",
    "reserve",
    "cleanup",
    "complete",
    "completed",
    "cancelled",
];

/// A `queue` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

/// Labels of a request count. Static strings: recording a request allocates nothing
/// (a `String` label would be built for every lookup).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

/// Labels of a request latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
    method: &'static str,
}

/// Why a request was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds, from 100 µs to ~105 s (request latency, snapshot time).
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

/// Seconds a job waited, from 1 s to ~36 h (submission times are whole seconds).
fn wait_histogram() -> Histogram {
    Histogram::new([
        0.5,
        1.0,
        5.0,
        15.0,
        60.0,
        300.0,
        900.0,
        3600.0,
        4.0 * 3600.0,
        24.0 * 3600.0,
    ])
}

/// The write-ahead log writer's figures: recorded by the writer thread
/// (`journal.rs`), exported here. Clones share the same histograms.
#[derive(Clone, Debug)]
pub struct WalStats {
    /// Seconds to write and fdatasync one group-commit batch.
    pub sync_seconds: Histogram,
    /// Records in one group-commit batch.
    pub batch_records: Histogram,
}

impl Default for WalStats {
    fn default() -> Self {
        WalStats {
            sync_seconds: Histogram::new(exponential_buckets(0.00002, 2.0, 18)),
            batch_records: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
        }
    }
}

impl WalStats {
    /// Records one batch of `records` that took `took` to write and sync.
    pub fn batch(&self, records: usize, took: Duration) {
        self.sync_seconds.observe(took.as_secs_f64());
        self.batch_records.observe(records as f64);
    }
}

/// Which queues get their own label (at most `cap`), and the per-queue dispatch series
/// that follow from it. Queues agents serve ([`QueueLabels::served`]) come first: one
/// seen when every label is taken takes over the label of a queue no agent serves (whose
/// dispatch series go; it is counted under `other` from then on). Other queues get a
/// label while one is free, in the order seen.
struct QueueLabels {
    cap: usize,
    /// The agent data: which queues agents advertise or list in their records.
    agents: crate::actors::Shared<crate::model::agents::Agents>,
    /// Queues with a label of their own. Its lock is held while a queue is admitted or
    /// evicted, so the series below change with it.
    admitted: RwLock<FastSet<Name>>,
    /// Jobs handed to agents, per queue label (registered, shared with the registry).
    dispatches: Family<QueueLabel, Counter>,
    /// Seconds from submission to dispatch, per queue label (likewise).
    waits: HistogramFamily<QueueLabel>,
    /// The dispatch count and wait histogram of each queue with a label of its own (at most
    /// the cap), found without two SipHash lookups and a label string per dispatch.
    handles: RwLock<FastMap<Name, (Counter, Histogram)>>,
}

impl QueueLabels {
    /// Whether an agent serves `queue`: advertises it, or lists it in its record.
    fn served(agents: &crate::model::agents::Agents, queue: &str) -> bool {
        agents.queues.contains_key(queue) || agents.serving(queue).next().is_some()
    }

    /// Whether `queue` has (or now gets) a label of its own: it has one; or one is free;
    /// or an agent serves it and a queue no agent serves gives its label up.
    fn admit(&self, admitted: &mut FastSet<Name>, queue: &str) -> bool {
        if admitted.contains(queue) {
            return true;
        }
        if admitted.len() < self.cap {
            admitted.insert(Name::from(queue));
            return true;
        }
        let victim = {
            let agents = self.agents.read();
            if !Self::served(&agents, queue) {
                return false;
            }
            admitted.iter().find(|q| !Self::served(&agents, q)).cloned()
        };
        let Some(victim) = victim else {
            return false;
        };
        admitted.remove(&victim);
        self.handles.write().remove(&victim);
        let label = QueueLabel {
            queue: label_value(&victim),
        };
        self.dispatches.remove(&label);
        self.waits.remove(&label);
        admitted.insert(Name::from(queue));
        true
    }

    /// The `queue` label value of `queue`: its name, escaped (see [`label_value`]), or
    /// `other` when it has no label of its own.
    fn label(&self, queue: &str) -> String {
        if self.admitted.read().contains(queue) {
            return label_value(queue);
        }
        if self.admit(&mut self.admitted.write(), queue) {
            label_value(queue)
        } else {
            OTHER.to_owned()
        }
    }

    /// Labels the queues of `summaries` (their [`QueueLabels::label`]), those agents
    /// serve first so they take the free labels before the others do; returns them in
    /// that order.
    fn label_live(
        &self,
        mut summaries: Vec<crate::actors::registry::QueueSummary>,
    ) -> Vec<(String, crate::actors::registry::QueueSummary)> {
        {
            let agents = self.agents.read();
            summaries.sort_by_key(|s| !Self::served(&agents, &s.queue));
        }
        summaries
            .into_iter()
            .map(|s| (self.label(&s.queue), s))
            .collect()
    }

    /// `queue`'s dispatch count and wait histogram: its own, or `other`'s.
    fn dispatch_series(&self, queue: &str) -> (Counter, Histogram) {
        if let Some(series) = self.handles.read().get(queue) {
            return series.clone();
        }
        // Held until the handle is kept, so an eviction cannot come between.
        let mut admitted = self.admitted.write();
        let own = self.admit(&mut admitted, queue);
        let label = QueueLabel {
            queue: if own {
                label_value(queue)
            } else {
                OTHER.to_owned()
            },
        };
        let series = (
            self.dispatches.get_or_create(&label).clone(),
            self.waits.get_or_create(&label).clone(),
        );
        // Queues without a label of their own share `other` and are not kept here, so
        // this map stays within the cap.
        if own {
            self.handles
                .write()
                .insert(Name::from(queue), series.clone());
        }
        series
    }
}

/// `text` as an OpenMetrics label value: backslash, double quote and line feed escaped,
/// as the exposition format requires. prometheus-client writes label values as they are,
/// and queue names are the clients' (they may hold `"` and `\`): unescaped, one name could
/// end its label early, add labels of its own, or make the whole scrape unparseable.
fn label_value(text: &str) -> String {
    if !text.contains(['\\', '"', '\n']) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Every metric of one server.
pub struct Metrics {
    /// What `/metrics` encodes.
    registry: Registry,
    /// Which queues have a `queue` label of their own, and their dispatch series.
    queues: Arc<QueueLabels>,
    /// The jobs, for the queues a scrape labels ([`Metrics::encode`]).
    jobs: Jobs,
    /// Requests answered, per route, method and status.
    requests: Family<RequestLabels, Counter>,
    /// Seconds to answer, per route and method.
    latency: HistogramFamily<RouteLabels>,
    /// The count and histogram of each label set seen, found without the families'
    /// SipHash-keyed maps (a third of `request`'s cost on every request).
    handles: RwLock<FastMap<RequestLabels, (Counter, Histogram)>>,
    /// Requests refused for a limit or an unavailable log, per reason.
    refused: Family<ReasonLabel, Counter>,
    /// Connections open now.
    connections: Gauge,
    /// Seconds to take a snapshot (copy, encode, write, install).
    snapshot_seconds: Histogram,
    /// Size of the last snapshot, bytes.
    snapshot_bytes: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// The metrics of a server whose jobs are `jobs`, whose agent data is `agents` and
    /// whose log writer records into `wal`; `queue_cap` is `--metrics-queues`. `connections` counts the process's open
    /// HTTP connections ([`ConnectionGuard::open`]): it is made by whoever accepts them,
    /// because on the PostgreSQL journal the accept loop outlives a leader's term and its
    /// metrics (`crate::ha`).
    pub fn new(
        jobs: Jobs,
        agents: crate::actors::Shared<crate::model::agents::Agents>,
        wal: WalStats,
        queue_cap: usize,
        connections: Gauge,
    ) -> Metrics {
        let queues = Arc::new(QueueLabels {
            cap: queue_cap,
            agents,
            admitted: RwLock::new(FastSet::default()),
            dispatches: Family::default(),
            waits: Family::new_with_constructor(wait_histogram),
            handles: RwLock::default(),
        });
        let m = Metrics {
            registry: Registry::default(),
            queues: queues.clone(),
            jobs: jobs.clone(),
            requests: Family::default(),
            latency: Family::new_with_constructor(seconds_histogram),
            handles: RwLock::default(),
            refused: Family::default(),
            connections,
            snapshot_seconds: seconds_histogram(),
            snapshot_bytes: Gauge::default(),
        };
        let mut registry = Registry::with_prefix("flinger");
        registry.register(
            "dispatches",
            "Jobs handed to agents, per queue",
            queues.dispatches.clone(),
        );
        registry.register(
            "job_wait_seconds",
            "Seconds from submission to dispatch of dispatched jobs, per queue",
            queues.waits.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, per matched route template, method and status",
            m.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Seconds from request to response head, per matched route template and method",
            m.latency.clone(),
        );
        registry.register(
            "refused_requests",
            "Requests refused: too_large (413), unavailable (503: busy or log failed), no_space (507)",
            m.refused.clone(),
        );
        registry.register(
            "open_connections",
            "HTTP connections open now",
            m.connections.clone(),
        );
        registry.register(
            "snapshot_duration_seconds",
            "Seconds to take one snapshot (copy, encode, write, install)",
            m.snapshot_seconds.clone(),
        );
        registry.register(
            "snapshot_bytes",
            "Size of the last snapshot written, bytes",
            m.snapshot_bytes.clone(),
        );
        registry.register(
            "wal_sync_seconds",
            "Seconds to write and fdatasync one group-commit batch of the write-ahead log",
            wal.sync_seconds,
        );
        registry.register(
            "wal_batch_records",
            "Records per group-commit batch of the write-ahead log",
            wal.batch_records,
        );
        registry.register_collector(Box::new(JobFigures { jobs, queues }));
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text of every metric now.
    pub fn encode(&self) -> String {
        // The queues with unfinished jobs get their labels before anything is written:
        // the registry writes the dispatch series before the collector runs, and a label
        // given up to a served queue must take its dispatch series with it in this scrape.
        self.queues.label_live(self.jobs.queue_summaries());
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// A job of `queue` was dispatched after waiting `waited_secs`.
    pub fn dispatched(&self, queue: &str, waited_secs: u64) {
        let waited = waited_secs as f64;
        if let Some((count, wait)) = self.queues.handles.read().get(queue) {
            count.inc();
            wait.observe(waited);
            return;
        }
        let (count, wait) = self.queues.dispatch_series(queue);
        count.inc();
        wait.observe(waited);
    }

    /// A request to `route` (its template, or `unmatched`) with `method` (a standard
    /// method's name, or `other`) was answered with `status` after `took`. The caller
    /// (`http::front`) keeps both labels to a fixed set: see the module docs.
    pub fn request(&self, route: &'static str, method: &'static str, status: u16, took: Duration) {
        let labels = RequestLabels {
            route,
            method,
            status,
        };
        let seconds = took.as_secs_f64();
        let known = self.handles.read().get(&labels).map(|(count, latency)| {
            count.inc();
            latency.observe(seconds);
        });
        if known.is_none() {
            let count = self.requests.get_or_create(&labels).clone();
            let latency = self
                .latency
                .get_or_create(&RouteLabels { route, method })
                .clone();
            count.inc();
            latency.observe(seconds);
            // The labels are from fixed sets (see the module docs): this map stays small.
            self.handles.write().insert(labels, (count, latency));
        }
        let reason = match status {
            413 => "too_large",
            503 => "unavailable",
            507 => "no_space",
            _ => return,
        };
        self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// The gauge of open HTTP connections (shared: the accept loop counts into it).
    pub fn open_connections(&self) -> Gauge {
        self.connections.clone()
    }

    /// A snapshot of `bytes` was taken in `took`.
    pub fn snapshot(&self, took: Duration, bytes: usize) {
        self.snapshot_seconds.observe(took.as_secs_f64());
        self.snapshot_bytes.set(bytes as i64);
    }
}

/// Counts a connection as open while alive.
pub struct ConnectionGuard(Gauge);

impl ConnectionGuard {
    /// A connection opened; it counts in `open` until the guard drops.
    pub fn open(open: &Gauge) -> ConnectionGuard {
        open.inc();
        ConnectionGuard(open.clone())
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Scrape-time figures from the registry's read indexes.
struct JobFigures {
    jobs: Jobs,
    queues: Arc<QueueLabels>,
}

impl std::fmt::Debug for JobFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobFigures")
    }
}

/// One queue's (or `other`'s) figures.
#[derive(Default)]
struct QueueFigures {
    waiting: i64,
    running: i64,
    oldest_wait: i64,
}

impl Collector for JobFigures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = crate::actors::now();
        let mut queues: BTreeMap<String, QueueFigures> = BTreeMap::new();
        for (label, summary) in self.queues.label_live(self.jobs.queue_summaries()) {
            let figures = queues.entry(label).or_default();
            figures.waiting += summary.waiting as i64;
            figures.running += summary.running as i64;
            if let Some(since) = summary.oldest_waiting_since {
                figures.oldest_wait = figures.oldest_wait.max(now.saturating_sub(since) as i64);
            }
        }
        type Pick = fn(&QueueFigures) -> i64;
        let gauges: [(&str, &str, Pick); 3] = [
            (
                "queue_waiting_jobs",
                "Jobs waiting in the queue (queues without unfinished jobs are absent)",
                |f| f.waiting,
            ),
            (
                "queue_running_jobs",
                "Jobs dispatched from the queue and not finished",
                |f| f.running,
            ),
            (
                "queue_oldest_wait_seconds",
                "Seconds the queue's oldest waiting job has waited (0: none waiting)",
                |f| f.oldest_wait,
            ),
        ];
        for (name, help, pick) in gauges {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (queue, figures) in &queues {
                let labels = QueueLabel {
                    queue: queue.clone(),
                };
                ConstGauge::new(pick(figures)).encode(metric.encode_family(&labels)?)?;
            }
        }
        let mut states: BTreeMap<&str, i64> = BTreeMap::new();
        let counts = self.jobs.state_counts();
        for (label, n) in &counts {
            let label = STATES
                .iter()
                .find(|s| ***s == **label)
                .copied()
                .unwrap_or(OTHER);
            *states.entry(label).or_default() += *n as i64;
        }
        let mut metric = encoder.encode_descriptor(
            "jobs",
            "Jobs known (not yet removed by retention), per job_state",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in states {
            #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
            struct StateLabel {
                state: String,
            }
            let labels = StateLabel {
                state: state.to_owned(),
            };
            ConstGauge::new(n).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
