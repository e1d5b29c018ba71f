//! The security log: refused requests as events (target `flinger::security`: who, what,
//! from where; never a secret or a token), throttled without hiding who was refused.
//!
//! A client hammering a bad token or a forbidden path must not flood the log, so each
//! kind of event (`authn_fail`, `authz_fail`, ...) is written at most once per
//! [`crate::throttle::EVERY`]. But what is dropped must still say who sent it: throttled
//! per kind alone, one bad login for a decoy followed by guesses for a manager from
//! another address logged only the decoy. So a kind's window counts what it drops per
//! source (client and address, an IPv6 /64 counting as one address, the first
//! [`MAX_NAMED`] of them, then one count for the rest), and the line that ends the window
//! names them: the kind's next event once the
//! window has passed, or, when none comes, a summary line written as the window ends. At
//! most one line per kind per interval either way, each of bounded length, however many
//! addresses flood.
//!
//! Not here: one-off security events that cannot be repeated at will (a token issued, a
//! client saved) are logged where they happen, unthrottled.

use std::net::SocketAddr;
use std::time::Instant;

use parking_lot::Mutex;

use super::address::address_key;
use super::Caller;
use crate::throttle::EVERY;

/// Longest client id or path a security line carries, in bytes: a refused request can
/// name a 60 KB path, and the log is not the place to store it.
const LOGGED_TEXT: usize = 200;

/// Most sources (client and address) a window names with their counts; the rest are one
/// count, so a line stays short under a flood from many addresses.
const MAX_NAMED: usize = 8;

/// Logs a refused request as a security event of `kind`, throttled as the module docs
/// say. `who` and `path` are cut and escaped (`loggable`).
pub fn security_event(
    kind: &'static str,
    who: &str,
    method: &str,
    path: &str,
    from: Option<SocketAddr>,
    why: &str,
) {
    // An IPv4 client of a dual-stack socket as its IPv4 address, as limits count it.
    let from_ip = from.map(|a| a.ip().to_canonical());
    let from = from_ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    let who = loggable(who);
    // Counted per address as limits count one (an IPv6 /64 is one), so one host cannot
    // fill the named sources from many addresses of its /64 and hide the others.
    let key = from_ip.map_or_else(|| "unknown".to_owned(), |ip| address_key(ip).to_string());
    let source = format!("client={who} from={key}");
    // Without a runtime (a unit test) nothing can write the window's summary when it
    // ends: the kind's next line carries it.
    let runtime = tokio::runtime::Handle::try_current().ok();
    let verdict = window(kind, |w| w.event(source, Instant::now(), runtime.is_some()));
    match verdict {
        Verdict::Write(summary) => {
            let path = loggable(path);
            tracing::warn!(target: "flinger::security", event = kind, client = &*who, method, path = &*path, from = %from, suppressed = summary.suppressed, suppressed_by = summary.by.as_deref(), "{why}");
        }
        Verdict::Drop { flush_at: Some(at) } => {
            if let Some(runtime) = runtime {
                runtime.spawn(flush(kind, at));
            }
        }
        Verdict::Drop { flush_at: None } => {}
    }
}

/// Logs a handler's own refusal (`status` 401 or 403, `why` its message) as a security
/// event, as `authorize` logs its own: the checks the table cannot make (a client edit
/// above the caller's role, a priority over the caller's maximum, a job owned by another
/// client) are refusals of the same kind, and the same client hammering them must show
/// up in the log, once per [`crate::throttle::EVERY`].
pub fn handler_refusal(
    caller: Option<&Caller>,
    method: &str,
    path: &str,
    from: Option<SocketAddr>,
    status: u16,
    why: &str,
) {
    let kind = if status == 401 {
        "authn_fail"
    } else {
        "authz_fail"
    };
    let who = match caller {
        Some(Caller::Open) => "open",
        Some(caller) => caller.who(),
        None => "unknown",
    };
    security_event(kind, who, method, path, from, why);
}

/// Writes `kind`'s summary once its window has ended (at `at`, or later if a line was
/// written meanwhile and more were dropped after it).
async fn flush(kind: &'static str, mut at: Instant) {
    loop {
        tokio::time::sleep_until(at.into()).await;
        match window(kind, |w| w.flush(Instant::now())) {
            Flush::Write(summary) => {
                let n = summary.suppressed;
                tracing::warn!(target: "flinger::security", event = kind, suppressed = n, suppressed_by = summary.by.as_deref(), "{n} refused requests not logged one by one in the last {} s", EVERY.as_secs());
                return;
            }
            Flush::Later(later) => at = later,
            Flush::Nothing => return,
        }
    }
}

/// Runs `f` over `kind`'s window (made if new). The kinds are a handful of literals, so
/// a short list, searched by pointer or text.
fn window<T>(kind: &'static str, f: impl FnOnce(&mut Window) -> T) -> T {
    static WINDOWS: Mutex<Vec<(&'static str, Window)>> = Mutex::new(Vec::new());
    let mut windows = WINDOWS.lock();
    let i = match windows.iter().position(|(k, _)| *k == kind) {
        Some(i) => i,
        None => {
            windows.push((kind, Window::default()));
            windows.len() - 1
        }
    };
    f(&mut windows[i].1)
}

/// One kind's throttle: when its last line was written, and what was dropped since.
#[derive(Debug, Default)]
struct Window {
    /// When the kind's last line was written (`None`: never).
    written: Option<Instant>,
    /// Dropped events by source (`client=… from=…`), the first [`MAX_NAMED`] sources.
    named: Vec<(String, u64)>,
    /// Dropped events of the sources beyond those.
    others: u64,
    /// A task will write the summary when the window ends.
    flush_pending: bool,
}

/// What the line that ends a window says about what it dropped.
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    suppressed: u64,
    /// `client=mgr from=127.0.0.6 (5), …; and N more from other sources` (`None`: nothing
    /// was dropped).
    by: Option<String>,
}

/// What to do with one event.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Write it, with the summary of what its window dropped.
    Write(Summary),
    /// Drop it (counted); if `flush_at`, start the task that writes the summary then.
    Drop { flush_at: Option<Instant> },
}

/// What the summary task does when it wakes.
#[derive(Debug, PartialEq, Eq)]
enum Flush {
    /// Write this summary line.
    Write(Summary),
    /// A line was written since: the window now ends at this instant.
    Later(Instant),
    /// Nothing dropped to report.
    Nothing,
}

impl Window {
    /// An event from `source` at `now`; `can_flush`: a summary task can be started.
    fn event(&mut self, source: String, now: Instant, can_flush: bool) -> Verdict {
        match self.written {
            Some(written) if now.duration_since(written) < EVERY => {
                let room = self.named.len() < MAX_NAMED;
                match self.named.iter_mut().find(|(s, _)| *s == source) {
                    Some((_, n)) => *n += 1,
                    None if room => self.named.push((source, 1)),
                    None => self.others += 1,
                }
                let start = can_flush && !self.flush_pending;
                self.flush_pending |= start;
                Verdict::Drop {
                    flush_at: start.then_some(written + EVERY),
                }
            }
            _ => {
                self.written = Some(now);
                Verdict::Write(self.take())
            }
        }
    }

    /// The summary task's turn at `now`.
    fn flush(&mut self, now: Instant) -> Flush {
        if self.named.is_empty() && self.others == 0 {
            self.flush_pending = false;
            return Flush::Nothing;
        }
        let ends = self.written.map_or(now, |w| w + EVERY);
        if now < ends {
            return Flush::Later(ends);
        }
        self.written = Some(now);
        self.flush_pending = false;
        Flush::Write(self.take())
    }

    /// What was dropped since the last line, now reported: the counts start again.
    fn take(&mut self) -> Summary {
        let named = std::mem::take(&mut self.named);
        let others = std::mem::take(&mut self.others);
        let suppressed = named.iter().map(|(_, n)| n).sum::<u64>() + others;
        if suppressed == 0 {
            return Summary {
                suppressed,
                by: None,
            };
        }
        let mut by = named
            .iter()
            .map(|(source, n)| format!("{source} ({n})"))
            .collect::<Vec<_>>()
            .join(", ");
        if others > 0 {
            by.push_str(&format!("; and {others} more from other sources"));
        }
        Summary {
            suppressed,
            by: Some(by),
        }
    }
}

/// `text` as a security line carries it: control characters escaped (a client id from
/// a Basic header could hold a newline and forge a line), cut after [`LOGGED_TEXT`]
/// bytes with `…`. Lines record it as a string field (quoted, its quotes escaped), never
/// with `%`: a client id may hold spaces, `=` and quotes, and printed bare it could add
/// fields of its own to the line (`client=x event="authn_token_created"`).
fn loggable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= LOGGED_TEXT && !text.chars().any(char::is_control) {
        return text.into();
    }
    let mut out = String::with_capacity(LOGGED_TEXT + 8);
    for c in text.chars() {
        if out.len() >= LOGGED_TEXT {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn logged_text_is_cut_and_cannot_forge_lines() {
        assert_eq!(loggable("short"), "short");
        let long = "é".repeat(150); // 300 bytes
        assert_eq!(loggable(&long), format!("{}…", "é".repeat(LOGGED_TEXT / 2)));
        let over = "a".repeat(LOGGED_TEXT + 1);
        assert_eq!(loggable(&over).len(), LOGGED_TEXT + '…'.len_utf8());
        assert_eq!(loggable("x\nWARN fake"), "x\\nWARN fake");
    }

    /// The reviewer's decoy: one bad login for `decoy`, then five guesses for `mgr` from
    /// another address. The decoy's line is written; the window's end names `mgr`.
    #[test]
    fn the_line_that_ends_a_window_names_who_it_dropped() {
        let t = Instant::now();
        let mut w = Window::default();
        let decoy = "client=decoy from=127.0.0.5".to_owned();
        let none = Summary {
            suppressed: 0,
            by: None,
        };
        assert_eq!(w.event(decoy, t, true), Verdict::Write(none));
        let mgr = || "client=mgr from=127.0.0.6".to_owned();
        let at = |ms| t + Duration::from_millis(ms);
        assert_eq!(
            w.event(mgr(), at(100), true),
            Verdict::Drop {
                flush_at: Some(t + EVERY)
            }
        );
        for ms in 101..105 {
            assert_eq!(
                w.event(mgr(), at(ms), true),
                Verdict::Drop { flush_at: None }
            );
        }
        assert_eq!(w.flush(at(9_999)), Flush::Later(t + EVERY));
        let summary = Summary {
            suppressed: 5,
            by: Some("client=mgr from=127.0.0.6 (5)".into()),
        };
        assert_eq!(w.flush(t + EVERY), Flush::Write(summary));
        // The summary counts as the window's line; nothing more to report.
        assert_eq!(w.flush(t + EVERY * 2), Flush::Nothing);
    }

    /// A flood from many sources: one line per window, naming the first few sources and
    /// counting the rest; the kind's next event carries it when it comes first.
    #[test]
    fn a_flood_from_many_sources_is_one_bounded_line_per_window() {
        let t = Instant::now();
        let mut w = Window::default();
        assert!(matches!(
            w.event("first".into(), t, false),
            Verdict::Write(_)
        ));
        for n in 0..1000 {
            let source = format!("client=c{} from=10.0.0.{}", n % 20, n % 20);
            let dropped = w.event(source, t + Duration::from_millis(1), false);
            assert_eq!(dropped, Verdict::Drop { flush_at: None });
        }
        let Verdict::Write(summary) = w.event("next".into(), t + EVERY, false) else {
            panic!("the next window's first event is written");
        };
        assert_eq!(summary.suppressed, 1000);
        let by = summary.by.unwrap();
        assert!(
            by.starts_with("client=c0 from=10.0.0.0 (50), client=c1 "),
            "{by}"
        );
        assert!(by.ends_with("; and 600 more from other sources"), "{by}");
        assert_eq!(by.matches(" (50)").count(), MAX_NAMED);
    }
}
