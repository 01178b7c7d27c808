//! Routes raft-rs's `slog` records into `tracing`, so the watchdog has one
//! log stream.
//!
//! raft-rs logs through a [`slog::Logger`] passed to `RawNode::new`.
//! [`TracingDrain`] turns each record into a `tracing` event with target
//! `raft`, the level mapped (critical and error → ERROR, warning → WARN,
//! info → INFO, debug → DEBUG, trace → TRACE) and the record's key-values
//! appended to the message as ` key=value`.

use std::fmt::{self, Write as _};

use slog::{Drain, KV, Level, OwnedKVList, Record, Serializer};

/// A [`slog::Drain`] that forwards every record to `tracing`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingDrain;

/// The `slog::Logger` to pass to raft-rs: forwards to `tracing`, tagged
/// with the node's Raft id.
pub fn raft_logger(node_id: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!("raft_id" => node_id))
}

/// Appends ` key=value` for every pair it is given.
struct KvText(String);

impl Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments<'_>) -> slog::Result {
        // Writing into a String cannot fail.
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl TracingDrain {
    fn text(record: &Record<'_>, values: &OwnedKVList) -> String {
        let mut kv = KvText(String::new());
        // Serializing into a String cannot fail; a failing KV impl only loses
        // its pairs, never the message.
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        format!("{}{}", record.msg(), kv.0)
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        // Check `enabled!` first: raft-rs logs a lot at debug level, and
        // formatting is the expensive part.
        macro_rules! forward {
            ($level:expr) => {
                if tracing::enabled!(target: "raft", $level) {
                    let text = Self::text(record, values);
                    tracing::event!(target: "raft", $level, "{}", text);
                }
            };
        }
        match record.level() {
            Level::Critical | Level::Error => forward!(tracing::Level::ERROR),
            Level::Warning => forward!(tracing::Level::WARN),
            // raft-rs narrates every vote and term change at info; the
            // watchdog logs what matters (role changes) itself, so logs stay
            // quiet at info level.
            Level::Info | Level::Debug => forward!(tracing::Level::DEBUG),
            Level::Trace => forward!(tracing::Level::TRACE),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn records_reach_tracing_with_level_and_key_values() {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let log = raft_logger(7);
            slog::info!(log, "became leader at term {term}", term = 3; "extra" => "x");
            slog::warn!(log, "careful");
            slog::crit!(log, "broken");
            slog::debug!(log, "details");
            slog::trace!(log, "too fine to show");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(
            lines[0].contains("DEBUG"),
            "raft info is debug for us: {out}"
        );
        assert!(lines[0].contains("raft:"), "{out}");
        assert!(lines[0].contains("became leader at term 3"), "{out}");
        assert!(lines[0].contains("extra=x"), "{out}");
        assert!(lines[0].contains("raft_id=7"), "{out}");
        assert!(lines[1].contains("WARN") && lines[1].contains("careful"));
        assert!(lines[2].contains("ERROR") && lines[2].contains("broken"));
        assert!(lines[3].contains("DEBUG") && lines[3].contains("details"));
    }
}
