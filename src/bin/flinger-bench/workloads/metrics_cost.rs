//! The `metrics-cost` workload: what a Prometheus scrape of `GET /metrics` once a
//! second costs the submit and pop throughput. At each concurrency it runs the submit
//! cell and the pop cell twice in a row on the same server, once unscraped and once
//! with a scraper beside it (ABBA order: submit unscraped then scraped, pop scraped
//! then unscraped, so a drift of the box's load biases the two ratios oppositely), and
//! reports scraped / unscraped throughput per pair.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;

use super::cells::POP_QUEUES;
use super::Bench;
use crate::client::{Conn, Target};
use crate::report::{fmt_us, Cell};
use crate::stats::{micros, Latency, Pct};
use crate::Abort;

/// How often the scraper fetches `/metrics` (Prometheus' usual interval is 15 s or
/// more; once a second is a pessimistic scraper).
const SCRAPE_EVERY: Duration = Duration::from_secs(1);

/// What the scraper saw during one cell.
struct Scrapes {
    ok: u64,
    errors: u64,
    bytes: usize,
    lat: Pct,
}

/// Fetches `/metrics` every [`SCRAPE_EVERY`] on a connection of its own until `stop`.
async fn scrape(target: Target, timeout: Duration, stop: Arc<AtomicBool>) -> Scrapes {
    let mut conn = Conn::new(&target, timeout);
    let mut lat = Latency::default();
    let (mut ok, mut errors, mut bytes) = (0, 0, 0);
    let mut tick = tokio::time::interval(SCRAPE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Checks `stop` every 50 ms between scrapes, so the scraper ends with its cell.
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let start = Instant::now();
                match conn.call(Method::GET, "/metrics", None, None).await {
                    Ok((status, body)) if status.is_success() => {
                        ok += 1;
                        bytes = body.len();
                        lat.record_us(micros(start.elapsed()));
                    }
                    _ => errors += 1,
                }
            }
            _ = poll.tick() => {}
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
    Scrapes {
        ok,
        errors,
        bytes,
        lat: Pct::of(&lat),
    }
}

impl Bench {
    /// The four cells of `metrics-cost` at concurrency `c` (see the module docs).
    pub(super) async fn metrics_cost_cells(
        &mut self,
        target: &Target,
        c: usize,
    ) -> Result<Vec<Cell>, Abort> {
        let mut cells = Vec::new();
        for (op, scraped_first) in [("submit", false), ("pop", true)] {
            let mut pair: [Option<Cell>; 2] = [None, None];
            for scraped in [scraped_first, !scraped_first] {
                self.check()?;
                let stop = Arc::new(AtomicBool::new(false));
                let scraper = scraped
                    .then(|| tokio::spawn(scrape(target.clone(), self.timeout, stop.clone())));
                let mut cell = if op == "submit" {
                    self.submit_cell(target, c, "metrics-cost", None).await?
                } else {
                    let queues: Vec<String> = POP_QUEUES.iter().map(|q| q.to_string()).collect();
                    let mut waiting = self.waiting_abc;
                    let cell = self
                        .pop_cell(target, &queues, &mut waiting, c, "metrics-cost")
                        .await;
                    self.waiting_abc = waiting;
                    cell?
                };
                stop.store(true, Ordering::SeqCst);
                cell.label = if scraped {
                    format!("{op}, /metrics scraped every 1 s")
                } else {
                    format!("{op}, unscraped")
                };
                if let Some(scraper) = scraper {
                    if let Ok(s) = scraper.await {
                        cell.notes.push(format!(
                            "{} scrapes of /metrics ({} failed), {} bytes each, scrape p50 {} max {}",
                            s.ok,
                            s.errors,
                            s.bytes,
                            fmt_us(s.lat.p50),
                            fmt_us(s.lat.max)
                        ));
                    }
                }
                pair[usize::from(scraped)] = Some(cell);
            }
            let [Some(plain), Some(scraped)] = pair else {
                continue;
            };
            if plain.rps > 0.0 {
                let ratio = scraped.rps / plain.rps;
                let line = format!(
                    "metrics-cost {op} c={c}: {:.0} req/s scraped vs {:.0} unscraped: ratio {ratio:.3}",
                    scraped.rps, plain.rps
                );
                eprintln!("{line}");
                self.rep.notes.push(line);
            }
            // Shown in measurement order.
            if scraped_first {
                cells.extend([scraped, plain]);
            } else {
                cells.extend([plain, scraped]);
            }
        }
        Ok(cells)
    }
}
