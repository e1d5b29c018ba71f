//! The report: what a run measured ([`Cell`] rows, the scale run's
//! [`ScaleInfo`], the soak's and the adversarial workload's [`Phase`]s) and
//! how it is shown: a Markdown document on stdout and, with `--json`, the raw
//! figures. Nothing here measures; workloads fill these structs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use crate::server::{Rss, Seen};
use crate::stats::Pct;
use crate::Cli;

/// One (workload, concurrency) measurement.
pub struct Cell {
    pub label: String,
    pub kind: &'static str,
    pub c: usize,
    pub requests: u64,
    pub errors: u64,
    pub warm_errors: u64,
    pub ok_all: u64,
    pub secs: f64,
    pub rps: f64,
    /// Lifecycle: completed measured jobs and jobs/s.
    pub jobs: Option<(u64, f64)>,
    pub lat: Pct,
    pub job_lat: Option<Pct>,
    pub kinds: BTreeMap<String, u64>,
    pub rss: Option<Rss>,
    pub server_cpu_s: Option<f64>,
    pub client_cpu_s: f64,
    pub ratio: Option<(f64, &'static str)>,
    pub vs_empty: Option<f64>,
    pub sample: Option<String>,
    pub notes: Vec<String>,
    pub cut: bool,
}

fn rate(n: u64, d: u64) -> f64 {
    if d == 0 {
        0.0
    } else {
        n as f64 / d as f64
    }
}

impl Cell {
    pub fn error_rate(&self) -> f64 {
        rate(self.errors, self.requests)
    }

    fn json(&self) -> Value {
        json!({
            "label": self.label,
            "workload": self.kind,
            "concurrency": self.c,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate(),
            "warmup_errors": self.warm_errors,
            "ok_including_warmup": self.ok_all,
            "measured_seconds": self.secs,
            "requests_per_second": self.rps,
            "jobs": self.jobs.map(|j| j.0),
            "jobs_per_second": self.jobs.map(|j| j.1),
            "latency": self.lat.json(),
            "job_latency": self.job_lat.map(|p| p.json()),
            "error_kinds": self.kinds,
            "server_vm_hwm_kb": self.rss.map(|r| r.hwm_kb),
            "server_vm_rss_kb": self.rss.map(|r| r.rss_kb),
            "server_cpu_seconds": self.server_cpu_s,
            "client_cpu_seconds": self.client_cpu_s,
            "ratio_vs_baseline": self.ratio.map(|r| r.0),
            "baseline_compared": self.ratio.map(|r| r.1),
            "ratio_vs_empty_queue": self.vs_empty,
            "sample_body": self.sample,
            "notes": self.notes,
            "cut_short": self.cut,
        })
    }
}

#[derive(Default)]
pub struct ScaleInfo {
    pub jobs: u64,
    pub queues: usize,
    pub prefill_ok: u64,
    pub prefill_errors: u64,
    pub prefill_secs: f64,
    pub depth: u64,
    pub rss_after_prefill: Option<Rss>,
    pub rss_before_restart: Option<Rss>,
    pub stop: Option<(Duration, bool)>,
    pub restart_secs: Option<f64>,
    pub rss_after_restart: Option<Rss>,
    pub position_after_restart: Option<String>,
}

/// One second of a submit + pop phase.
pub struct WindowRow {
    /// Index: the window covers [second, second + 1) from the measurement's start.
    pub second: u64,
    /// Measured length of the window (the last one may be shorter).
    pub secs: f64,
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub all: Pct,
    pub submit: Pct,
    pub pop: Pct,
    /// Server events seen in this second ("snapshot taken 1923 ms", "segment rotated").
    pub events: Vec<String>,
}

impl WindowRow {
    fn json(&self) -> Value {
        json!({
            "second": self.second,
            "seconds": self.secs,
            "requests": self.requests,
            "errors": self.errors,
            "requests_per_second": self.rps,
            "latency": self.all.json(),
            "submit_latency": self.submit.json(),
            "pop_latency": self.pop.json(),
            "server_events": self.events,
        })
    }
}

/// A measured submit + pop phase (the soak, or one phase of the adversarial
/// workload): every worker submits a job and then pops one, in turn.
pub struct Phase {
    pub label: String,
    pub c: usize,
    pub secs: f64,
    pub requests: u64,
    pub errors: u64,
    pub warm_errors: u64,
    pub rps: f64,
    pub all: Pct,
    pub submit: Pct,
    pub pop: Pct,
    pub windows: Vec<WindowRow>,
    pub kinds: BTreeMap<String, u64>,
    /// Server's peak RSS during the phase (KiB) and how it was found.
    pub peak_rss_kb: Option<u64>,
    pub rss_how: &'static str,
    pub server_cpu_s: Option<f64>,
    pub client_cpu_s: f64,
    pub cut: bool,
}

impl Phase {
    pub fn error_rate(&self) -> f64 {
        rate(self.errors, self.requests)
    }

    fn json(&self) -> Value {
        json!({
            "label": self.label,
            "concurrency": self.c,
            "measured_seconds": self.secs,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate(),
            "warmup_errors": self.warm_errors,
            "requests_per_second": self.rps,
            "latency": self.all.json(),
            "submit_latency": self.submit.json(),
            "pop_latency": self.pop.json(),
            "error_kinds": self.kinds,
            "server_peak_rss_kb": self.peak_rss_kb,
            "server_peak_rss_from": self.rss_how,
            "server_cpu_seconds": self.server_cpu_s,
            "client_cpu_seconds": self.client_cpu_s,
            "cut_short": self.cut,
            "windows": self.windows.iter().map(WindowRow::json).collect::<Vec<_>>(),
        })
    }
}

pub struct SoakReport {
    /// The server's command-line extras (snapshot and segment sizes).
    pub server_args: Vec<String>,
    pub phase: Phase,
    /// Snapshots and rotations seen (spawned servers only).
    pub seen: Option<Seen>,
    pub notes: Vec<String>,
}

/// One kind of attacker's figures over the attacked phase (ramp included).
#[derive(Default)]
pub struct AttackerRow {
    pub kind: &'static str,
    /// What it does, for the report.
    pub what: String,
    /// How many run at once.
    pub count: usize,
    pub opened: u64,
    /// Connections the server closed (or answered and closed) while the
    /// attacker was still sending or waiting.
    pub closed_by_server: u64,
    pub bytes_sent: u64,
    /// Requests completed (search floods) and their slowest.
    pub requests: u64,
    pub max_latency_us: u64,
    /// Answers by status line, and client-side failures, as seen.
    pub answers: BTreeMap<String, u64>,
}

impl AttackerRow {
    fn json(&self) -> Value {
        json!({
            "kind": self.kind,
            "what": self.what,
            "count": self.count,
            "connections_opened": self.opened,
            "closed_by_server": self.closed_by_server,
            "bytes_sent": self.bytes_sent,
            "requests_completed": self.requests,
            "max_latency_us": self.max_latency_us,
            "answers": self.answers,
        })
    }
}

#[derive(Default)]
pub struct AdversarialReport {
    pub quiet: Option<Phase>,
    pub attacked: Option<Phase>,
    pub attackers: Vec<AttackerRow>,
    pub ramp_s: f64,
    pub notes: Vec<String>,
}

impl AdversarialReport {
    /// Attacked p99 ÷ quiet p99 (the target is at most 2).
    pub fn p99_ratio(&self) -> Option<f64> {
        let (q, a) = (self.quiet.as_ref()?, self.attacked.as_ref()?);
        (q.all.p99 > 0).then(|| a.all.p99 as f64 / q.all.p99 as f64)
    }
}

#[derive(Default)]
pub struct Report {
    pub cmdline: String,
    pub header: Vec<String>,
    pub baseline: Vec<Cell>,
    pub cells: Vec<Cell>,
    pub scale_cells: Vec<Cell>,
    pub scale: Option<ScaleInfo>,
    pub soak: Option<SoakReport>,
    pub adversarial: Option<AdversarialReport>,
    /// The long-poll workload's figures.
    pub longpoll: Option<crate::workloads::LongpollReport>,
    pub notes: Vec<String>,
    pub aborted: Option<String>,
    /// Workload names in --workloads order: the table groups rows by them.
    pub order: Vec<&'static str>,
}

pub fn fmt_us(us: u64) -> String {
    if us < 1000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1000.0)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

fn fmt_mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

fn fmt_rss(r: Option<Rss>) -> String {
    r.map_or("n/a".into(), |r| {
        format!("{} ({})", fmt_mib(r.hwm_kb), fmt_mib(r.rss_kb))
    })
}

pub fn fmt_kinds(kinds: &BTreeMap<String, u64>) -> String {
    kinds
        .iter()
        .map(|(k, n)| format!("{n}× `{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn fmt_errors(errors: u64, rate: f64) -> String {
    if errors == 0 {
        "0".to_string()
    } else {
        format!("{errors} ({:.2}%)", rate * 100.0)
    }
}

fn rss_json(r: Option<Rss>) -> Value {
    r.map_or(
        Value::Null,
        |r| json!({"vm_hwm_kb": r.hwm_kb, "vm_rss_kb": r.rss_kb}),
    )
}

impl Report {
    fn row(out: &mut String, cell: &Cell, extra: Option<String>) {
        let ratio = cell
            .ratio
            .map_or("—".into(), |(r, what)| format!("{r:.2}× {what}"));
        let cut = if cell.cut { " (cut short)" } else { "" };
        let _ = write!(
            out,
            "| {}{} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            cell.label,
            cut,
            cell.c,
            cell.rps,
            fmt_us(cell.lat.p50),
            fmt_us(cell.lat.p99),
            fmt_us(cell.lat.p999),
            fmt_errors(cell.errors, cell.error_rate()),
            ratio,
            fmt_rss(cell.rss)
        );
        if let Some(e) = extra {
            let _ = write!(out, " {e} |");
        }
        out.push('\n');
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# flinger-bench\n\n");
        for h in &self.header {
            let _ = writeln!(out, "- {h}");
        }
        if !self.baseline.is_empty() || !self.cells.is_empty() {
            out.push_str(
                "\n| workload | c | req/s | p50 | p99 | p999 | errors | ratio vs baseline | server peak RSS (now) |\n\
                 |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            );
            // Measured concurrency-major; shown grouped by workload.
            let mut rows: Vec<&Cell> = self.cells.iter().collect();
            rows.sort_by_key(|c| {
                let w = self
                    .order
                    .iter()
                    .position(|&k| k == c.kind)
                    .unwrap_or(usize::MAX);
                (w, c.c)
            });
            let mut base: Vec<&Cell> = self.baseline.iter().collect();
            base.sort_by_key(|c| (c.kind == "baseline-get", c.c));
            for cell in base.into_iter().chain(rows) {
                Self::row(&mut out, cell, None);
            }
        }
        if !self.scale_cells.is_empty() || self.scale.is_some() {
            self.render_scale(&mut out);
        }
        if let Some(s) = &self.soak {
            render_soak(&mut out, s);
        }
        if let Some(a) = &self.adversarial {
            render_adversarial(&mut out, a);
        }
        if let Some(l) = &self.longpoll {
            l.render(&mut out);
        }
        let mut notes: Vec<String> = Vec::new();
        for cell in self
            .baseline
            .iter()
            .chain(&self.cells)
            .chain(&self.scale_cells)
        {
            for n in &cell.notes {
                notes.push(format!("{} c={}: {n}", cell.label, cell.c));
            }
            if !cell.kinds.is_empty() {
                notes.push(format!(
                    "{} c={} errors (incl. {} in warm-up): {}",
                    cell.label,
                    cell.c,
                    cell.warm_errors,
                    fmt_kinds(&cell.kinds)
                ));
            }
            if cell.kind == "position" {
                if let Some(s) = &cell.sample {
                    notes.push(format!(
                        "{} c={}: answer `{}`",
                        cell.label,
                        cell.c,
                        s.trim()
                    ));
                }
            }
        }
        for p in self.phases() {
            if !p.kinds.is_empty() {
                notes.push(format!(
                    "{} c={} errors (incl. {} in warm-up): {}",
                    p.label,
                    p.c,
                    p.warm_errors,
                    fmt_kinds(&p.kinds)
                ));
            }
        }
        notes.extend(self.notes.iter().cloned());
        if !self.cells.is_empty() || !self.scale_cells.is_empty() {
            notes.push(
                "ratio = flinger req/s ÷ baseline req/s at the same c (POST rows vs baseline POST, \
                 GET rows vs baseline GET, lifecycle vs the same 10 POST + 2 GET mix); latencies are \
                 per request; RSS is the spawned server's VmHWM (VmRSS now) after the cell"
                    .into(),
            );
        }
        if !notes.is_empty() {
            out.push_str("\nNotes:\n");
            for n in notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        if let Some(a) = &self.aborted {
            let _ = writeln!(out, "\n**Run incomplete:** {a}");
        }
        out
    }

    fn render_scale(&self, out: &mut String) {
        out.push_str("\n## Scale\n\n");
        if let Some(s) = &self.scale {
            let _ = writeln!(
                out,
                "- pre-fill: {} of {} jobs over {} queues in {:.1} s ({:.0} jobs/s), {} errors; deepest queue {} jobs",
                s.prefill_ok,
                s.jobs,
                s.queues,
                s.prefill_secs,
                s.prefill_ok as f64 / s.prefill_secs.max(1e-9),
                s.prefill_errors,
                s.depth
            );
            let _ = writeln!(
                out,
                "- server RSS after pre-fill: {}",
                fmt_rss(s.rss_after_prefill)
            );
            let _ = writeln!(
                out,
                "- server RSS before restart: {}",
                fmt_rss(s.rss_before_restart)
            );
            if let Some((d, killed)) = s.stop {
                let _ = writeln!(
                    out,
                    "- SIGTERM to exit: {:.3} s{}",
                    d.as_secs_f64(),
                    if killed {
                        " (did not exit; SIGKILLed)"
                    } else {
                        ""
                    }
                );
            }
            if let Some(t) = s.restart_secs {
                let _ = writeln!(
                    out,
                    "- restart on the same data dir, start-up until GET /v1 answers: {t:.3} s; RSS after: {}",
                    fmt_rss(s.rss_after_restart)
                );
            }
            if let Some(p) = &s.position_after_restart {
                let _ = writeln!(out, "- deep job's position after restart: `{p}`");
            }
        }
        if !self.scale_cells.is_empty() {
            out.push_str(
                "\n| workload | c | req/s | p50 | p99 | p999 | errors | ratio vs baseline | server peak RSS (now) | vs empty queue |\n\
                 |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            );
            for cell in &self.scale_cells {
                let vs = cell.vs_empty.map_or("—".into(), |v| format!("{v:.2}×"));
                Self::row(out, cell, Some(vs));
            }
        }
    }

    /// The soak's and the adversarial workload's phases.
    fn phases(&self) -> Vec<&Phase> {
        let mut v: Vec<&Phase> = Vec::new();
        if let Some(s) = &self.soak {
            v.push(&s.phase);
        }
        if let Some(a) = &self.adversarial {
            v.extend(a.quiet.iter().chain(&a.attacked));
        }
        v
    }

    pub fn failing_cells(&self) -> Vec<String> {
        let cells = self
            .baseline
            .iter()
            .chain(&self.cells)
            .chain(&self.scale_cells)
            .filter(|c| c.error_rate() > 0.01)
            .map(|c| format!("{} c={} ({:.2}%)", c.label, c.c, c.error_rate() * 100.0));
        let phases = self
            .phases()
            .into_iter()
            .filter(|p| p.error_rate() > 0.01)
            .map(|p| format!("{} c={} ({:.2}%)", p.label, p.c, p.error_rate() * 100.0));
        cells.chain(phases).collect()
    }

    pub fn to_json(&self, args: &Cli, conc: &[usize], seconds: f64, warmup: f64) -> Value {
        let cells = |v: &[Cell]| v.iter().map(Cell::json).collect::<Vec<_>>();
        json!({
            "command": self.cmdline,
            "header": self.header,
            "settings": {
                "url": args.url,
                "server_bin": args.server_bin,
                "workloads": args.workloads.iter().map(|w| w.name()).collect::<Vec<_>>(),
                "concurrency": conc,
                "seconds": seconds,
                "warmup_seconds": warmup,
                "requests_cap": args.requests,
                "max_seconds": args.max_seconds,
                "scale": args.scale,
            },
            "baseline": cells(&self.baseline),
            "cells": cells(&self.cells),
            "scale_cells": cells(&self.scale_cells),
            "scale": self.scale.as_ref().map(|s| json!({
                "jobs": s.jobs,
                "queues": s.queues,
                "prefill_ok": s.prefill_ok,
                "prefill_errors": s.prefill_errors,
                "prefill_seconds": s.prefill_secs,
                "deepest_queue": s.depth,
                "rss_after_prefill": rss_json(s.rss_after_prefill),
                "rss_before_restart": rss_json(s.rss_before_restart),
                "sigterm_to_exit_seconds": s.stop.map(|x| x.0.as_secs_f64()),
                "sigkilled": s.stop.map(|x| x.1),
                "restart_to_ready_seconds": s.restart_secs,
                "rss_after_restart": rss_json(s.rss_after_restart),
                "position_after_restart": s.position_after_restart,
            })),
            "soak": self.soak.as_ref().map(|s| json!({
                "server_args": s.server_args,
                "run": s.phase.json(),
                "server_events": s.seen.as_ref().map(Seen::json),
                "notes": s.notes,
            })),
            "adversarial": self.adversarial.as_ref().map(|a| json!({
                "quiet": a.quiet.as_ref().map(Phase::json),
                "attacked": a.attacked.as_ref().map(Phase::json),
                "p99_attacked_over_quiet": a.p99_ratio(),
                "attack_ramp_seconds": a.ramp_s,
                "attackers": a.attackers.iter().map(AttackerRow::json).collect::<Vec<_>>(),
                "notes": a.notes,
            })),
            "longpoll": self.longpoll.as_ref().map(|l| l.json()),
            "notes": self.notes,
            "failing_cells": self.failing_cells(),
            "aborted": self.aborted,
        })
    }
}

fn fmt_rss_kb(kb: Option<u64>) -> String {
    kb.map_or("n/a".into(), fmt_mib)
}

fn render_soak(out: &mut String, s: &SoakReport) {
    let p = &s.phase;
    let _ = writeln!(
        out,
        "\n## Soak: submit + pop at c={} for {:.0} s{}\n",
        p.c,
        p.secs,
        if p.cut { " (cut short)" } else { "" }
    );
    if !s.server_args.is_empty() {
        let _ = writeln!(out, "- server extras: `{}`", s.server_args.join(" "));
    }
    let _ = writeln!(
        out,
        "- whole run: {} requests, {:.0} req/s, p50 {}, p99 {}, p999 {}, max {}; errors {}",
        p.requests,
        p.rps,
        fmt_us(p.all.p50),
        fmt_us(p.all.p99),
        fmt_us(p.all.p999),
        fmt_us(p.all.max),
        fmt_errors(p.errors, p.error_rate())
    );
    let _ = writeln!(
        out,
        "- submit: p99 {}, p999 {}, max {}; pop: p99 {}, p999 {}, max {}",
        fmt_us(p.submit.p99),
        fmt_us(p.submit.p999),
        fmt_us(p.submit.max),
        fmt_us(p.pop.p99),
        fmt_us(p.pop.p999),
        fmt_us(p.pop.max)
    );
    match &s.seen {
        Some(seen) => {
            let durations: Vec<String> = seen
                .snapshots
                .iter()
                .map(|x| x.total_ms.map_or("?".into(), |ms| format!("{ms} ms")))
                .collect();
            let _ = writeln!(
                out,
                "- server: {} snapshots taken (\"snapshot taken\" log lines; each took {}), \
                 {} snapshot files written, {} segment rotations",
                seen.snapshots.len(),
                if durations.is_empty() {
                    "—".to_string()
                } else {
                    durations.join(", ")
                },
                seen.snapshot_files,
                seen.rotations.len()
            );
        }
        None => out.push_str("- server: not spawned by the bench, snapshots not counted\n"),
    }
    let _ = writeln!(
        out,
        "- server peak RSS: {} ({}); server CPU {}; client CPU {:.1} s",
        fmt_rss_kb(p.peak_rss_kb),
        p.rss_how,
        p.server_cpu_s.map_or("n/a".into(), |c| format!("{c:.1} s")),
        p.client_cpu_s
    );
    for n in &s.notes {
        let _ = writeln!(out, "- {n}");
    }
    out.push_str(
        "\n| s | req/s | p50 | p99 | p999 | max | submit p99 | pop p99 | errors | server |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for w in &p.windows {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
            w.second,
            w.rps,
            fmt_us(w.all.p50),
            fmt_us(w.all.p99),
            fmt_us(w.all.p999),
            fmt_us(w.all.max),
            fmt_us(w.submit.p99),
            fmt_us(w.pop.p99),
            w.errors,
            w.events.join("; ")
        );
    }
}

fn render_adversarial(out: &mut String, a: &AdversarialReport) {
    let c = a.quiet.as_ref().or(a.attacked.as_ref()).map_or(0, |p| p.c);
    let _ = writeln!(
        out,
        "\n## Adversarial: normal load (submit + pop, c={c}) quiet, then beside attackers\n"
    );
    out.push_str(
        "| phase | req/s | p50 | p99 | p999 | max | errors | server peak RSS |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for p in a.quiet.iter().chain(&a.attacked) {
        let _ = writeln!(
            out,
            "| {}{} | {:.0} | {} | {} | {} | {} | {} | {} |",
            p.label,
            if p.cut { " (cut short)" } else { "" },
            p.rps,
            fmt_us(p.all.p50),
            fmt_us(p.all.p99),
            fmt_us(p.all.p999),
            fmt_us(p.all.max),
            fmt_errors(p.errors, p.error_rate()),
            fmt_rss_kb(p.peak_rss_kb)
        );
    }
    if let Some(r) = a.p99_ratio() {
        let _ = writeln!(
            out,
            "\n- p99 attacked ÷ quiet: {r:.2}× (target ≤ 2×: {})",
            if r <= 2.0 { "met" } else { "NOT met" }
        );
    }
    if let (Some(q), Some(t)) = (&a.quiet, &a.attacked) {
        if q.rps > 0.0 {
            let _ = writeln!(out, "- req/s attacked ÷ quiet: {:.3}×", t.rps / q.rps);
        }
        let _ = writeln!(out, "- peak RSS: {}", t.rss_how);
    }
    if !a.attackers.is_empty() {
        let _ = writeln!(
            out,
            "\nAttackers (over the {}-s ramp and the attacked phase):\n",
            a.ramp_s
        );
        out.push_str(
            "| attacker | at once | connections | closed by server | bytes sent | answers |\n\
             |---|---:|---:|---:|---:|---|\n",
        );
        for r in &a.attackers {
            let mut answers = fmt_kinds(&r.answers);
            if r.requests > 0 {
                let _ = write!(
                    answers,
                    "{}{} completed, slowest {}",
                    if answers.is_empty() { "" } else { "; " },
                    r.requests,
                    fmt_us(r.max_latency_us)
                );
            }
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                r.what,
                r.count,
                r.opened,
                r.closed_by_server,
                fmt_bytes(r.bytes_sent),
                if answers.is_empty() {
                    "—".into()
                } else {
                    answers
                }
            );
        }
    }
    if !a.notes.is_empty() {
        out.push('\n');
    }
    for n in &a.notes {
        let _ = writeln!(out, "- {n}");
    }
}

fn fmt_bytes(b: u64) -> String {
    if b < 10 * 1024 {
        format!("{b} B")
    } else if b < 10 << 20 {
        format!("{:.0} KiB", b as f64 / 1024.0)
    } else {
        format!("{:.0} MiB", b as f64 / 1048576.0)
    }
}
