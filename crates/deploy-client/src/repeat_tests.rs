//! A write is never sent twice: when its connection breaks after the request left, the client
//! does not carry it to another endpoint. A read is asked again there.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;

/// An HTTP/2 endpoint that takes each call, counts it, and breaks the connection without an
/// answer, as a node killed mid-call does.
async fn breaking_endpoint() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                if let Some(Ok(_request)) = conn.accept().await {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                // Dropped: the connection closes with the call unanswered.
            });
        }
    });
    (format!("http://{addr}"), calls)
}

#[tokio::test]
async fn a_write_whose_connection_broke_is_not_sent_to_another_endpoint() {
    let (a, at_a) = breaking_endpoint().await;
    let (b, at_b) = breaking_endpoint().await;
    let client = Client::new([a.as_str(), b.as_str()])
        .unwrap()
        .with_timeout(Duration::from_secs(3));
    let e = client
        .set_meta("global", "k", Some("v"))
        .await
        .expect_err("nothing answers");
    assert_eq!(at_a.load(Ordering::SeqCst), 1, "{e}");
    assert_eq!(
        at_b.load(Ordering::SeqCst),
        0,
        "the write was sent again: {e}"
    );
    assert!(e.to_string().contains("not sent again"), "{e}");

    // A read is safe to ask again: it goes on to the next endpoint.
    let _ = client.get_meta("global", "k", false).await;
    assert!(
        at_b.load(Ordering::SeqCst) >= 1,
        "the read was not asked again"
    );
}

#[tokio::test]
async fn a_write_whose_reconnection_was_refused_goes_to_the_next_endpoint() {
    // Endpoint A takes the client's connection, then goes away (its port now refuses).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = listener.local_addr().unwrap();
    let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<()>();
    let (went_tx, went_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let conn = h2::server::handshake(tcp).await;
        let _ = gone_rx.await;
        drop(conn);
        drop(listener);
        let _ = went_tx.send(());
    });
    let (b, at_b) = breaking_endpoint().await;
    let client = Client::new([format!("http://{a}").as_str(), b.as_str()])
        .unwrap()
        .with_timeout(Duration::from_secs(3));
    let (index, _) = client.channel(None).await.unwrap();
    assert_eq!(index, 0, "connected to A");
    gone_tx.send(()).unwrap();
    went_rx.await.unwrap();
    // The request never left: it is sent to B, once.
    let r = client.set_meta("global", "k", Some("v")).await;
    assert_eq!(at_b.load(Ordering::SeqCst), 1, "{r:?}");
}

#[test]
fn only_a_refused_connection_proves_a_request_never_left() {
    let refused = tonic::Status::from_error(Box::new(std::io::Error::from(
        std::io::ErrorKind::ConnectionRefused,
    )));
    assert!(never_sent(&refused));
    let reset = tonic::Status::from_error(Box::new(std::io::Error::from(
        std::io::ErrorKind::ConnectionReset,
    )));
    assert!(!never_sent(&reset));
    assert!(!never_sent(&tonic::Status::unavailable("no leader")));
}
