//! The fault-injecting TCP proxy in front of every coordinator node and relay.
//!
//! Every node advertises the proxy's address and binds its own listener elsewhere (`listen`
//! in the cluster config), and its own connections leave from its own loopback IP
//! (`source_ip`). So the proxy in front of node B knows, from a connection's source address,
//! which node is calling, and can drop, reset, slow or corrupt the link from A to B alone:
//! partitions between any pair of nodes, one-way ones included, without root or namespaces.
//! Connections from anything else (clients, workers, relays, agents) come from 127.0.0.1 and
//! count as [`Peer::Outside`].
//!
//! Rules are kept per fault, so two faults touching one link heal independently; a link
//! takes the most severe rule in effect. A rule change reaches connections already open:
//! a dropped link stops forwarding (the bytes wait, as they would in a real partition, until
//! it heals or the peers give up), a reset link closes.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Who opened a connection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// A coordinator node, known by its source IP.
    Node(String),
    /// Clients, workers, relays and agents.
    Outside,
}

/// What happens to the bytes of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Pass,
    /// Bytes go through late.
    Delay(Duration),
    /// Bytes from the server side have some of their bytes flipped.
    Corrupt,
    /// Nothing goes through, and nothing is refused: the link is silent.
    Drop,
    /// Connections close, new ones are refused.
    Reset,
}

impl Link {
    fn severity(self) -> (u8, Duration) {
        match self {
            Link::Pass => (0, Duration::ZERO),
            Link::Delay(d) => (1, d),
            Link::Corrupt => (2, Duration::ZERO),
            Link::Drop => (3, Duration::ZERO),
            Link::Reset => (4, Duration::ZERO),
        }
    }
}

type Key = (Peer, String);

#[derive(Default)]
struct Rules {
    /// Fault id -> the links it changes.
    by_fault: BTreeMap<u64, Vec<(Key, Link)>>,
}

struct Inner {
    rules: RwLock<Rules>,
    version: watch::Sender<u64>,
    /// Source IP -> node name.
    ips: BTreeMap<IpAddr, String>,
}

/// The rules of every proxy of one cluster.
#[derive(Clone)]
pub struct Net {
    inner: Arc<Inner>,
}

impl Net {
    /// `ips` maps each node's source IP to its name.
    pub fn new(ips: BTreeMap<IpAddr, String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                rules: RwLock::default(),
                version: watch::channel(0).0,
                ips,
            }),
        }
    }

    fn bump(&self) {
        self.inner.version.send_modify(|v| *v += 1);
    }

    /// Fault `fault` sets the links from `from` to each of `to`.
    pub fn set(&self, fault: u64, links: Vec<(Peer, String, Link)>) {
        {
            let mut r = self.inner.rules.write().unwrap_or_else(|p| p.into_inner());
            let entry = r.by_fault.entry(fault).or_default();
            entry.extend(links.into_iter().map(|(f, t, l)| ((f, t), l)));
        }
        self.bump();
    }

    /// Removes every rule of `fault`.
    pub fn heal(&self, fault: u64) {
        let removed = self
            .inner
            .rules
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .by_fault
            .remove(&fault)
            .is_some();
        if removed {
            self.bump();
        }
    }

    /// Removes every rule.
    pub fn heal_all(&self) {
        self.inner
            .rules
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .by_fault
            .clear();
        self.bump();
    }

    /// Faults with rules in effect.
    pub fn active(&self) -> usize {
        self.inner
            .rules
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_fault
            .len()
    }

    /// The link from `from` to `to` as every rule in effect makes it: the most severe.
    pub fn link(&self, from: &Peer, to: &str) -> Link {
        let r = self.inner.rules.read().unwrap_or_else(|p| p.into_inner());
        r.by_fault
            .values()
            .flatten()
            .filter(|((f, t), _)| f == from && t == to)
            .map(|(_, l)| *l)
            .max_by_key(|l| l.severity())
            .unwrap_or(Link::Pass)
    }

    fn peer_of(&self, addr: SocketAddr) -> Peer {
        self.inner
            .ips
            .get(&addr.ip())
            .map(|n| Peer::Node(n.clone()))
            .unwrap_or(Peer::Outside)
    }

    /// Serves `listener` as the proxy in front of `to`, whose real listener is `upstream`,
    /// until `stop`.
    pub async fn serve(
        self,
        listener: TcpListener,
        to: String,
        upstream: SocketAddr,
        stop: CancellationToken,
    ) {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.cancelled() => return,
            };
            let Ok((socket, peer)) = accepted else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let from = self.peer_of(peer);
            let conn = Conn {
                net: self.clone(),
                from,
                to: to.clone(),
                stop: stop.child_token(),
            };
            tokio::spawn(conn.run(socket, upstream));
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

/// One proxied connection.
#[derive(Clone)]
struct Conn {
    net: Net,
    from: Peer,
    to: String,
    /// Cancelled when either side ends badly or the link resets: both directions close.
    stop: CancellationToken,
}

impl Conn {
    fn link(&self) -> Link {
        self.net.link(&self.from, &self.to)
    }

    /// Waits while the link is dropped; `false` once it resets or the connection ends.
    async fn through(&self) -> bool {
        let mut rx = self.net.inner.version.subscribe();
        loop {
            match self.link() {
                Link::Reset => return false,
                Link::Drop => {}
                _ => return true,
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return false },
                _ = self.stop.cancelled() => return false,
            }
        }
    }

    async fn run(self, client: TcpStream, upstream: SocketAddr) {
        let _ = client.set_nodelay(true);
        // A link that drops holds new connections unanswered; one that resets refuses them.
        if !self.through().await {
            return;
        }
        let server = match tokio::time::timeout(
            Duration::from_secs(2),
            TcpStream::connect(upstream),
        )
        .await
        {
            Ok(Ok(s)) => s,
            _ => return,
        };
        let _ = server.set_nodelay(true);
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        let up = tokio::spawn(self.clone().pump(cr, sw, Dir::Up));
        let down = tokio::spawn(self.clone().pump(sr, cw, Dir::Down));
        let _ = up.await;
        let _ = down.await;
    }

    async fn pump(
        self,
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        dir: Dir,
    ) {
        let mut rx = self.net.inner.version.subscribe();
        let mut buf = vec![0u8; 16 * 1024];
        let mut offset: u64 = 0;
        loop {
            let n = tokio::select! {
                r = from.read(&mut buf) => match r {
                    Ok(0) => {
                        let _ = to.shutdown().await;
                        return;
                    }
                    Ok(n) => n,
                    Err(_) => {
                        self.stop.cancel();
                        return;
                    }
                },
                r = rx.changed() => {
                    if r.is_err() || self.link() == Link::Reset {
                        self.stop.cancel();
                        return;
                    }
                    continue;
                }
                _ = self.stop.cancelled() => return,
            };
            if !self.through().await {
                self.stop.cancel();
                return;
            }
            match self.link() {
                Link::Delay(d) => tokio::time::sleep(d).await,
                Link::Corrupt if dir == Dir::Down => corrupt(&mut buf[..n], offset),
                _ => {}
            }
            let wrote = tokio::select! {
                w = to.write_all(&buf[..n]) => w.is_ok(),
                _ = self.stop.cancelled() => false,
            };
            if !wrote {
                self.stop.cancel();
                return;
            }
            offset += n as u64;
        }
    }
}

/// Flips bytes past the first KiB of a connection's server-to-client stream (response
/// headers get through, bodies do not): every 997th byte.
fn corrupt(buf: &mut [u8], offset: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        let at = offset + i as u64;
        if at >= 1024 && at.is_multiple_of(997) {
            *b ^= 0x5a;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> anyhow::Result<SocketAddr> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(addr)
    }

    /// A proxy on 127.0.0.1 in front of an echo server named "b"; callers from 127.0.0.2
    /// are node "a".
    async fn setup() -> anyhow::Result<(Net, SocketAddr, CancellationToken)> {
        let echo = echo_server().await?;
        let net = Net::new(BTreeMap::from([("127.0.0.2".parse()?, "a".to_string())]));
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let stop = CancellationToken::new();
        tokio::spawn(net.clone().serve(l, "b".into(), echo, stop.clone()));
        Ok((net, addr, stop))
    }

    async fn connect_from(ip: &str, to: SocketAddr) -> anyhow::Result<TcpStream> {
        let s = tokio::net::TcpSocket::new_v4()?;
        s.bind(SocketAddr::new(ip.parse()?, 0))?;
        Ok(s.connect(to).await?)
    }

    async fn round_trip(s: &mut TcpStream, msg: &[u8], within: Duration) -> Option<Vec<u8>> {
        s.write_all(msg).await.ok()?;
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(within, s.read_exact(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(buf)
    }

    #[tokio::test]
    async fn a_one_way_partition_stops_only_its_direction_and_heals() -> anyhow::Result<()> {
        let (net, addr, _stop) = setup().await?;
        let mut a = connect_from("127.0.0.2", addr).await?;
        let mut outside = connect_from("127.0.0.1", addr).await?;
        let short = Duration::from_millis(300);
        assert_eq!(
            round_trip(&mut a, b"ping", short).await.as_deref(),
            Some(&b"ping"[..])
        );
        net.set(1, vec![(Peer::Node("a".into()), "b".into(), Link::Drop)]);
        assert_eq!(
            round_trip(&mut a, b"lost", short).await,
            None,
            "a's link to b is cut"
        );
        assert_eq!(
            round_trip(&mut outside, b"ok", short).await.as_deref(),
            Some(&b"ok"[..]),
            "others still reach b"
        );
        net.heal(1);
        // The bytes held during the partition arrive once it heals, as TCP would deliver them.
        let mut buf = vec![0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), a.read_exact(&mut buf)).await??;
        assert_eq!(&buf, b"lost");
        Ok(())
    }

    #[tokio::test]
    async fn a_reset_closes_open_connections_and_refuses_new_ones() -> anyhow::Result<()> {
        let (net, addr, _stop) = setup().await?;
        let mut a = connect_from("127.0.0.2", addr).await?;
        assert!(round_trip(&mut a, b"x", Duration::from_secs(2))
            .await
            .is_some());
        net.set(7, vec![(Peer::Node("a".into()), "b".into(), Link::Reset)]);
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), a.read(&mut buf)).await?;
        assert!(matches!(n, Ok(0) | Err(_)), "the open connection closed");
        let mut again = connect_from("127.0.0.2", addr).await?;
        assert_eq!(
            round_trip(&mut again, b"y", Duration::from_millis(500)).await,
            None
        );
        Ok(())
    }

    #[tokio::test]
    async fn the_most_severe_rule_wins_and_faults_heal_separately() -> anyhow::Result<()> {
        let net = Net::new(BTreeMap::new());
        let o = Peer::Outside;
        net.set(
            1,
            vec![(
                o.clone(),
                "b".into(),
                Link::Delay(Duration::from_millis(50)),
            )],
        );
        net.set(2, vec![(o.clone(), "b".into(), Link::Drop)]);
        assert_eq!(net.link(&o, "b"), Link::Drop);
        net.heal(2);
        assert_eq!(net.link(&o, "b"), Link::Delay(Duration::from_millis(50)));
        net.heal_all();
        assert_eq!(net.link(&o, "b"), Link::Pass);
        Ok(())
    }

    #[tokio::test]
    async fn corruption_spares_the_first_kib_and_flips_the_rest() -> anyhow::Result<()> {
        let (net, addr, _stop) = setup().await?;
        net.set(3, vec![(Peer::Outside, "b".into(), Link::Corrupt)]);
        let mut s = connect_from("127.0.0.1", addr).await?;
        let msg = vec![7u8; 4096];
        let back = round_trip(&mut s, &msg, Duration::from_secs(5))
            .await
            .ok_or_else(|| anyhow::anyhow!("no echo"))?;
        assert_eq!(&back[..1024], &msg[..1024]);
        assert_ne!(back, msg);
        Ok(())
    }
}
