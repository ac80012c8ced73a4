//! Single-flight chunk fetching: one upstream fetch per chunk however many hosts ask, its
//! bytes forwarded to every waiting host as they arrive, and every answer paced within the
//! host's link and the relay's NIC.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    Receiving(usize),
    Done(usize),
    Failed,
}

/// A chunk being fetched: its bytes so far, which readers forward as they arrive.
pub(super) struct Inflight {
    pub(super) data: Mutex<BytesMut>,
    pub(super) progress: watch::Sender<Progress>,
}

impl Inner {
    /// The in-flight fetch of a chunk, started if none is; `None` if the chunk is cached
    /// (checked under the same lock the fetch leaves by, after caching: no second fetch).
    pub(super) fn fetching(self: &Arc<Self>, digest: &Digest) -> Option<Arc<Inflight>> {
        let mut map = lock(&self.inflight);
        if let Some(f) = map.get(digest) {
            return Some(f.clone());
        }
        if self.cache.contains(digest) {
            return None;
        }
        let f = Arc::new(Inflight {
            data: Mutex::new(BytesMut::new()),
            progress: watch::channel(Progress::Receiving(0)).0,
        });
        map.insert(*digest, f.clone());
        let me = self.clone();
        let digest = *digest;
        let job = f.clone();
        tokio::spawn(async move {
            me.stats.upstream_fetches.fetch_add(1, Ordering::Relaxed);
            let outcome = me.fetch_into(&digest, &job).await;
            match outcome {
                Ok(bytes) => {
                    if let Err(e) = me.cache.insert(&digest, &bytes).await {
                        warn!(chunk = %digest, error = %e, "cannot cache a chunk");
                    }
                    job.progress.send_replace(Progress::Done(bytes.len()));
                }
                Err(e) => {
                    warn!(chunk = %digest, error = %e, "chunk fetch failed");
                    job.progress.send_replace(Progress::Failed);
                }
            }
            lock(&me.inflight).remove(&digest);
        });
        Some(f)
    }

    /// Fetches a chunk from the first upstream that has it, appending to `job` as bytes
    /// arrive. A source that breaks off is resumed at the same offset from the next (the
    /// bytes are content-addressed, so any source's are the same). Verified at the end.
    pub(super) async fn fetch_into(
        &self,
        digest: &Digest,
        job: &Inflight,
    ) -> Result<Bytes, String> {
        let mut hasher = Sha256::new();
        let mut errors = Vec::new();
        let hex = digest.hex();
        for src in self.upstreams() {
            let offset = lock(&job.data).len();
            let mut req = self.http.get(format!("{src}/v1/chunks/{hex}"));
            if offset > 0 {
                req = req.header(header::RANGE, format!("bytes={offset}-"));
            }
            let resp = match req.send().await {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => {
                    errors.push(format!("{src}: {}", r.status()));
                    continue;
                }
                Err(e) => {
                    errors.push(format!("{src}: {e}"));
                    continue;
                }
            };
            if offset > 0 && resp.status() != StatusCode::PARTIAL_CONTENT {
                errors.push(format!("{src}: no range support"));
                continue;
            }
            let mut body = resp.bytes_stream();
            let mut broke = None;
            while let Some(part) = body.next().await {
                let part = match part {
                    Ok(p) => p,
                    Err(e) => {
                        broke = Some(e.to_string());
                        break;
                    }
                };
                self.up.take(part.len()).await;
                hasher.update(&part);
                let len = {
                    let mut d = lock(&job.data);
                    if d.len() + part.len() > self.opts.max_chunk_bytes {
                        return Err(format!(
                            "{src}: chunk larger than {} bytes",
                            self.opts.max_chunk_bytes
                        ));
                    }
                    d.extend_from_slice(&part);
                    d.len()
                };
                self.stats
                    .bytes_fetched
                    .fetch_add(part.len() as u64, Ordering::Relaxed);
                job.progress.send_replace(Progress::Receiving(len));
            }
            match broke {
                Some(e) => errors.push(format!("{src}: broke off: {e}")),
                None => {
                    let got = Digest::from_bytes(hasher.finalize().into());
                    if got != *digest {
                        return Err(format!("upstream bytes have digest {got}, not {digest}"));
                    }
                    return Ok(lock(&job.data).clone().freeze());
                }
            }
        }
        Err(format!(
            "no upstream served chunk {digest}: {}",
            errors.join("; ")
        ))
    }
}

/// A whole body sent in pieces within the limit of the host's link.
pub(super) fn paced(
    me: Arc<Inner>,
    body: Bytes,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    let link = me.opts.nic.sending(me.opts.down_limit);
    futures::stream::unfold(
        (me, body, 0usize, link),
        |(me, body, pos, link)| async move {
            if pos >= body.len() {
                return None;
            }
            let end = (pos + PIECE).min(body.len());
            link.take(end - pos).await;
            me.stats
                .bytes_served
                .fetch_add((end - pos) as u64, Ordering::Relaxed);
            Some((Ok(body.slice(pos..end)), (me, body, end, link)))
        },
    )
}

pub(super) struct Forwarding {
    me: Arc<Inner>,
    job: Arc<Inflight>,
    rx: watch::Receiver<Progress>,
    pos: usize,
    ended: bool,
    link: Bucket,
}

/// The bytes of an in-flight chunk, forwarded as they arrive within the limit of the host's
/// link; an error (the body breaks off) if the fetch fails or the bytes do not match.
pub(super) fn forward(
    me: Arc<Inner>,
    job: Arc<Inflight>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    let st = Forwarding {
        rx: job.progress.subscribe(),
        link: me.opts.nic.sending(me.opts.down_limit),
        me,
        job,
        pos: 0,
        ended: false,
    };
    futures::stream::unfold(st, |mut st| async move {
        if st.ended {
            return None;
        }
        loop {
            let progress = *st.rx.borrow_and_update();
            let piece = {
                let d = lock(&st.job.data);
                (st.pos < d.len())
                    .then(|| Bytes::copy_from_slice(&d[st.pos..d.len().min(st.pos + PIECE)]))
            };
            if let Some(piece) = piece {
                st.link.take(piece.len()).await;
                st.me
                    .stats
                    .bytes_served
                    .fetch_add(piece.len() as u64, Ordering::Relaxed);
                st.pos += piece.len();
                return Some((Ok(piece), st));
            }
            match progress {
                Progress::Done(_) => return None,
                Progress::Failed => {
                    st.ended = true;
                    let e = std::io::Error::other(
                        "the chunk could not be fetched or failed verification",
                    );
                    return Some((Err(e), st));
                }
                Progress::Receiving(_) => {
                    if st.rx.changed().await.is_err() {
                        return None;
                    }
                }
            }
        }
    })
}
