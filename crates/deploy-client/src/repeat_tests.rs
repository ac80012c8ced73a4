//! A write without a request id is never sent twice: when its connection breaks after the
//! request left, the client does not carry it to another endpoint. A read, or a write named
//! by a request id (which the cluster applies once), is asked again there.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;

use super::*;

type Bodies = Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// An HTTP/2 endpoint that takes each call, counts it, and breaks the connection without an
/// answer, as a node killed mid-call does.
async fn breaking_endpoint() -> (String, Arc<AtomicUsize>) {
    let (addr, calls, _) = recording_endpoint().await;
    (addr, calls)
}

/// As [`breaking_endpoint`], also keeping each call's body (the encoded request).
async fn recording_endpoint() -> (String, Arc<AtomicUsize>, Bodies) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let bodies: Bodies = Default::default();
    let (seen, kept) = (calls.clone(), bodies.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (seen, kept) = (seen.clone(), kept.clone());
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                if let Some(Ok((request, _respond))) = conn.accept().await {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let mut body = request.into_body();
                    let mut bytes = Vec::new();
                    // The connection must keep being driven while the body is read.
                    let read = async {
                        while let Some(Ok(chunk)) = body.data().await {
                            bytes.extend_from_slice(&chunk);
                            let _ = body.flow_control().release_capacity(chunk.len());
                            if body.is_end_stream() {
                                break;
                            }
                        }
                    };
                    tokio::select! {
                        _ = read => {}
                        _ = std::future::poll_fn(|cx| conn.poll_closed(cx)) => {}
                    }
                    kept.lock().unwrap().push(bytes);
                }
                // Dropped: the connection closes with the call unanswered.
            });
        }
    });
    (format!("http://{addr}"), calls, bodies)
}

/// A metadata write named by `id` ("" for none, as when the system has no randomness).
async fn set_meta_named(client: &Client, id: &str) -> Result<SetMetaReply, ClientError> {
    let req = SetMetaRequest {
        group: "global".into(),
        key: "k".into(),
        value: Some("v".into()),
        request_id: id.into(),
    };
    client
        .write_once(id, |ch| {
            let req = req.clone();
            async move { ClusterServiceClient::new(ch).set_meta(req).await }
        })
        .await
}

#[tokio::test]
async fn a_write_whose_connection_broke_is_not_sent_to_another_endpoint() {
    let (a, at_a) = breaking_endpoint().await;
    let (b, at_b) = breaking_endpoint().await;
    let client = Client::new([a.as_str(), b.as_str()])
        .unwrap()
        .with_timeout(Duration::from_secs(3));
    let e = set_meta_named(&client, "")
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
    let r = set_meta_named(&client, "").await;
    assert_eq!(at_b.load(Ordering::SeqCst), 1, "{r:?}");
}

/// Every write the client makes carries a request id, and one whose connection broke is
/// asked again on the next endpoint, as the same request: the cluster applies it once.
#[tokio::test]
async fn a_write_named_by_a_request_id_is_asked_again_with_the_same_id() {
    let (a, at_a, seen_a) = recording_endpoint().await;
    let (b, at_b, seen_b) = recording_endpoint().await;
    let client = Client::new([a.as_str(), b.as_str()])
        .unwrap()
        .with_timeout(Duration::from_secs(2));
    let e = client
        .set_meta("global", "k", Some("v"))
        .await
        .expect_err("nothing answers");
    assert!(at_a.load(Ordering::SeqCst) >= 1, "{e}");
    assert!(at_b.load(Ordering::SeqCst) >= 1, "not asked again: {e}");
    let all: Vec<Vec<u8>> = seen_a
        .lock()
        .unwrap()
        .iter()
        .chain(seen_b.lock().unwrap().iter())
        .cloned()
        .collect();
    // gRPC frames the message behind 5 bytes (a flag and a length).
    let first = SetMetaRequest::decode(&all[0][5..]).unwrap();
    assert_eq!(first.request_id.len(), 32, "{first:?}");
    for body in &all {
        assert_eq!(body, &all[0], "a repeat that is not the same request");
    }
    // Every other write does the same.
    let (na, nb) = (seen_a.lock().unwrap().len(), seen_b.lock().unwrap().len());
    let _ = client.cancel_build("b-1").await;
    let cancels: Vec<Vec<u8>> = seen_a.lock().unwrap()[na..]
        .iter()
        .chain(seen_b.lock().unwrap()[nb..].iter())
        .cloned()
        .collect();
    assert!(cancels.len() >= 2, "not asked again");
    let cancel = CancelBuildRequest::decode(&cancels[0][5..]).unwrap();
    assert_eq!((cancel.id.as_str(), cancel.request_id.len()), ("b-1", 32));
    assert!(cancels.iter().all(|c| c == &cancels[0]));
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
