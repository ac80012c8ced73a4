//! A TLS listener: TCP connections in, established TLS streams out, for tonic
//! (`serve_with_incoming`) or axum (`axum::serve`).
//!
//! Handshakes run apart from the accept loop, each bounded in time ([`HANDSHAKE_TIMEOUT`]),
//! so a slow or silent client holds up no one else. At most [`MAX_HANDSHAKES`] run at once,
//! and at most [`MAX_HANDSHAKES_PER_SOURCE`] from one source address: a connection past that
//! is closed at once, so one machine opening idle connections cannot take every place. A
//! refused peer is logged with its address and the reason, in words: a certificate from
//! another CA, no certificate where one is required, a plain-TCP client.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Handshakes in progress at once, at most; further connections wait to be accepted.
pub const MAX_HANDSHAKES: usize = 512;
/// Handshakes in progress from one source address, at most; the next is closed at once.
pub const MAX_HANDSHAKES_PER_SOURCE: usize = 32;
/// How long a handshake may take: loopback and a datacenter need milliseconds.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Handshakes in progress per source address. An entry goes when its last handshake ends,
/// so it holds at most [`MAX_HANDSHAKES`] entries, whatever the sources.
#[derive(Default)]
struct PerSource(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

impl PerSource {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, usize>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for `ip`, if it has one left.
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<SourcePlace> {
        let mut m = self.lock();
        let n = m.entry(ip).or_insert(0);
        if *n >= MAX_HANDSHAKES_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(SourcePlace {
            of: self.clone(),
            ip,
        })
    }
}

/// One handshake's place among its source's; given back when dropped.
struct SourcePlace {
    of: Arc<PerSource>,
    ip: std::net::IpAddr,
}

impl Drop for SourcePlace {
    fn drop(&mut self) {
        let mut m = self.of.lock();
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// How many connections a listener refused, for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct Refused(pub AtomicU64);

/// Why a handshake failed, as a person would say it.
pub fn explain(e: &std::io::Error) -> String {
    let text = e.to_string();
    if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        format!("its certificate is not signed by this cluster's CA ({text})")
    } else if text.contains("NoCertificatesPresented") || text.contains("no certificates") {
        format!("it presented no certificate, and one is required ({text})")
    } else if text.contains("corrupt message") || text.contains("InvalidContentType") {
        format!("it does not speak TLS: a plain-TCP client? ({text})")
    } else {
        text
    }
}

/// Accepts on `listener`, performs each TLS handshake with `config`, and yields the
/// established connections with their peers' addresses; `what` names the listener in logs.
pub fn accept(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    what: String,
    refused: Arc<Refused>,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let sources = Arc::new(PerSource::default());
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(listener = %what, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let Some(place) = sources.enter(peer.ip()) else {
                // Closed at once: its source already has every place it may take.
                refused.0.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(listener = %what, %peer, "closed a connection: too many handshakes in progress from its address");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, what, refused) =
                (acceptor.clone(), tx.clone(), what.clone(), refused.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let _place = place;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => {
                        refused.0.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(listener = %what, %peer, reason = %explain(&e), "refused a TLS connection");
                    }
                    Err(_) => {
                        refused.0.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(listener = %what, %peer, "refused a TLS connection: no handshake within {} s", HANDSHAKE_TIMEOUT.as_secs());
                    }
                }
            });
        }
    });
    rx
}

/// The established connections of [`accept`] as a stream, for tonic's `serve_with_incoming`.
pub struct Incoming(pub mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>);

impl futures::Stream for Incoming {
    type Item = Result<TlsStream<TcpStream>, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|c| c.map(|(s, _)| Ok(s)))
    }
}

/// The certificates a verified peer presented, from tonic's connection info.
pub fn peer_certs<T>(
    info: &tonic::transport::server::TlsConnectInfo<T>,
) -> Option<Arc<Vec<tonic::transport::CertificateDer<'static>>>> {
    info.peer_certs()
}

/// The process id of the peer of a request on a TLS connection, if it presented a
/// certificate (already verified by the handshake).
pub fn request_peer<T>(req: &tonic::Request<T>) -> Option<String> {
    let certs = req.peer_certs()?;
    certs.first().and_then(|c| crate::peer_id(c.as_ref()))
}

/// Who is at the other end of a connection an [`AxumListener`] (or a plain TCP listener)
/// accepted: its address and, when it presented a certificate of the cluster CA (verified by
/// the handshake), the process id the certificate names. Handlers take it as axum's
/// `ConnectInfo<Peer>`, with `into_make_service_with_connect_info::<Peer>()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    pub id: Option<String>,
}

impl Peer {
    fn of(tls: &TlsStream<TcpStream>, addr: SocketAddr) -> Self {
        let id = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| crate::peer_id(c.as_ref()));
        Self { addr, id }
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, AxumListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, AxumListener>) -> Self {
        stream.remote_addr().clone()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TcpListener>) -> Self {
        Self {
            addr: *stream.remote_addr(),
            id: None,
        }
    }
}

/// The established connections of [`accept`] as an axum listener (the relays' HTTP).
pub struct AxumListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl AxumListener {
    /// Serves TLS on `listener` with `config`; `what` names it in logs.
    pub fn new(
        listener: TcpListener,
        config: Arc<ServerConfig>,
        what: String,
        refused: Arc<Refused>,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        Ok(Self {
            rx: accept(listener, config, what, refused),
            local,
        })
    }
}

impl axum::serve::Listener for AxumListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some((tls, addr)) => {
                let peer = Peer::of(&tls, addr);
                (tls, peer)
            }
            // The accept loop ended: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer {
            addr: self.local,
            id: None,
        })
    }
}
