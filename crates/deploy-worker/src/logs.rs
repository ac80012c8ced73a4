//! A build attempt's log, written to the region's store in segments as it grows.
//!
//! Bytes arrive over a channel; a segment is written every [`FLUSH_EVERY`] or
//! [`SEGMENT_BYTES`], whichever comes first. Past the cap, the rest is dropped and one notice
//! says how much. The coordinator streams segments to `deployctl build logs --follow`.

use std::time::Duration;

use bytes::Bytes;
use deploy_artifact::Store;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub const FLUSH_EVERY: Duration = Duration::from_millis(300);
pub const SEGMENT_BYTES: usize = 64 * 1024;

/// Where log bytes go.
#[derive(Clone)]
pub struct LogTx(mpsc::Sender<Vec<u8>>);

impl LogTx {
    pub async fn write(&self, data: impl Into<Vec<u8>>) {
        let _ = self.0.send(data.into()).await;
    }

    /// A line from the worker itself, marked as such.
    pub async fn note(&self, line: &str) {
        self.write(format!("[worker] {line}\n")).await;
    }
}

/// Starts the writer; dropping every [`LogTx`] ends it after a last flush.
pub fn start(store: Store, build: String, attempt: u32, cap: u64) -> (LogTx, JoinHandle<u64>) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let task = tokio::spawn(async move {
        let mut seq = 0u32;
        let mut buf: Vec<u8> = Vec::new();
        let mut kept = 0u64;
        let mut dropped = 0u64;
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        let flush = |buf: &mut Vec<u8>, seq: &mut u32| {
            let data = Bytes::from(std::mem::take(buf));
            let store = store.clone();
            let build = build.clone();
            let s = *seq;
            *seq += 1;
            async move {
                if let Err(e) = store.put_log_segment(&build, attempt, s, data).await {
                    tracing::warn!(build = %build, error = %e, "cannot write a build log segment");
                }
            }
        };
        loop {
            tokio::select! {
                got = rx.recv() => match got {
                    Some(data) => {
                        let room = cap.saturating_sub(kept) as usize;
                        let take = room.min(data.len());
                        buf.extend_from_slice(&data[..take]);
                        kept += take as u64;
                        dropped += (data.len() - take) as u64;
                        if buf.len() >= SEGMENT_BYTES {
                            flush(&mut buf, &mut seq).await;
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    if !buf.is_empty() {
                        flush(&mut buf, &mut seq).await;
                    }
                }
            }
        }
        if dropped > 0 {
            buf.extend_from_slice(
                format!("\n[worker] log cut at {cap} bytes; {dropped} more bytes dropped\n")
                    .as_bytes(),
            );
        }
        if !buf.is_empty() {
            flush(&mut buf, &mut seq).await;
        }
        kept
    });
    (LogTx(tx), task)
}
