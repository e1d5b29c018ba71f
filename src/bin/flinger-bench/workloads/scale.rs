//! The opt-in scale runs (`--scale`): pre-fill a million waiting jobs over a
//! thousand queues, measure job position at depth, submit and pop against
//! that backlog, then restart the server on the same data dir and time its
//! start-up until the first answer.

use std::sync::Arc;
use std::time::Duration;

use hyper::Method;

use super::cells::Op;
use super::{Bench, Shape};
use crate::client::{Conn, Target};
use crate::report::{fmt_kinds, Cell, ScaleInfo};
use crate::server::{read_rss, ServerProc};
use crate::Abort;

impl Bench {
    pub(super) async fn run_scale(
        &mut self,
        server: &mut Option<ServerProc>,
        target: &mut Target,
    ) -> Result<(), Abort> {
        let n = self.args.scale_jobs;
        let q = self.args.scale_queues;
        let sc = self.args.scale_concurrency;
        let queues: Vec<String> = (0..q).map(|i| format!("bench-scale-{i}")).collect();
        eprintln!("scale: pre-filling {n} jobs over {q} queues at c={sc}");
        // Job n-1 goes to queue (n-1) % q, the last queue to get its extra
        // job, so it sits at the deepest queue's tail: depth ceil(n/q).
        let depth = n.div_ceil(q as u64);
        let p = self.prefill(target, &queues, n, sc, Some(n - 1)).await;
        let mut info = ScaleInfo {
            jobs: n,
            queues: q,
            prefill_ok: p.ok,
            prefill_errors: p.errors,
            prefill_secs: p.secs,
            depth,
            ..ScaleInfo::default()
        };
        if p.errors > 0 {
            self.rep.notes.push(format!(
                "scale pre-fill: {} errors: {}",
                p.errors,
                fmt_kinds(&p.kinds)
            ));
        }
        info.rss_after_prefill = target.pid.and_then(read_rss);
        self.rep.scale = Some(info);
        self.check()?;

        let empty = |kind: &str, cells: &[Cell]| {
            cells
                .iter()
                .find(|x| x.kind == kind && x.c == sc)
                .map(|x| x.rps)
        };

        if let Some(id) = &p.tracked {
            let paths = Arc::new(vec![format!("/v1/job/{id}/position")]);
            let mut cs = vec![1, sc];
            cs.dedup();
            for c in cs {
                let op = Op::Get {
                    paths: paths.clone(),
                };
                let label = format!("position @depth {depth}");
                let cell = self
                    .cell(target, op, c, "position", label, Shape::Get)
                    .await;
                self.rep.scale_cells.push(cell);
                self.check()?;
            }
        } else {
            self.rep
                .notes
                .push("scale: the deep job's id was not captured; position not measured".into());
        }

        let mut cell = self
            .submit_cell(target, sc, "submit", Some(&queues))
            .await?;
        cell.label = format!("submit @{n} waiting");
        cell.vs_empty = empty("submit", &self.rep.cells).map(|e| cell.rps / e);
        self.rep.scale_cells.push(cell);
        self.check()?;

        let pop_queues: Vec<String> = queues.iter().take(3).cloned().collect();
        // Jobs waiting in those queues, by the round-robin of the pre-fill.
        let mut waiting = p.ok * pop_queues.len() as u64 / q as u64;
        let mut cell = self
            .pop_cell(target, &pop_queues, &mut waiting, sc, "pop")
            .await?;
        cell.label = format!("pop @{n} waiting");
        cell.vs_empty = empty("pop", &self.rep.cells).map(|e| cell.rps / e);
        self.rep.scale_cells.push(cell);
        self.check()?;

        let rss_before = target.pid.and_then(read_rss);
        if let Some(sp) = server.as_mut() {
            eprintln!("scale: restarting {}", sp.spec.label);
            let stopped = sp.terminate(Duration::from_secs(60)).await;
            let limit = self.startup_limit().max(Duration::from_secs(300));
            let took = sp.spawn_and_wait(limit, self.deadline).await?;
            *target = sp.target();
            // Does the deep job survive the restart, and where is it now?
            let after = match &p.tracked {
                Some(id) => {
                    let mut conn = Conn::new(target, self.timeout);
                    match conn
                        .call(Method::GET, &format!("/v1/job/{id}/position"), None, None)
                        .await
                    {
                        Ok((s, b)) => Some(format!(
                            "{} {}",
                            s.as_u16(),
                            String::from_utf8_lossy(&b[..b.len().min(100)]).trim()
                        )),
                        Err(e) => Some(e),
                    }
                }
                None => None,
            };
            if let Some(info) = self.rep.scale.as_mut() {
                info.rss_before_restart = rss_before;
                info.stop = stopped;
                info.restart_secs = Some(took.as_secs_f64());
                info.rss_after_restart = target.pid.and_then(read_rss);
                info.position_after_restart = after;
            }
        } else {
            self.rep
                .notes
                .push("scale: server not spawned by us (--url), restart not measured".into());
            if let Some(info) = self.rep.scale.as_mut() {
                info.rss_before_restart = rss_before;
            }
        }
        Ok(())
    }
}
