//! The relay toward its region: the goal watch stream and the rack reports.

use super::*;

/// Keeps a watch on the rack's goals open to the regional leader, through any region node.
pub(super) async fn watch_goals(me: Arc<Inner>, stop: CancellationToken) {
    let req = pb::WatchRackRequest {
        region: me.opts.region.clone(),
        rack: me.opts.rack.clone(),
        hosts: me.opts.hosts.clone(),
    };
    while !stop.is_cancelled() {
        match me.client.watch_rack(req.clone()).await {
            Ok(mut stream) => loop {
                let next = tokio::select! {
                    m = tokio::time::timeout(Duration::from_secs(10), stream.message()) => m,
                    _ = stop.cancelled() => return,
                };
                match next {
                    Ok(Ok(Some(reply))) => me.set_goals(&reply),
                    Ok(Ok(None)) => break,
                    Ok(Err(e)) => {
                        debug!(error = %e.message(), "goal watch ended; watching again");
                        break;
                    }
                    Err(_) => {
                        debug!("goal watch silent; watching again");
                        break;
                    }
                }
            },
            Err(e) => debug!(error = %e, "cannot watch the rack's goals yet"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Sends the rack's reports to the regional leader (which also answers with the goals).
pub(super) async fn send_reports(me: Arc<Inner>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let hosts: Vec<pb::HostReport> = {
            let reports = lock(&me.reports);
            me.opts
                .hosts
                .iter()
                .map(|h| match reports.get(h) {
                    Some(r) => r.to_proto(),
                    None => pb::HostReport {
                        host: h.clone(),
                        services: Vec::new(),
                    },
                })
                .collect()
        };
        let req = pb::ReportRackRequest {
            region: me.opts.region.clone(),
            rack: me.opts.rack.clone(),
            hosts,
            relay: me.opts.id.clone(),
        };
        match me.client.report_rack(req).await {
            Ok(reply) => {
                me.stats.rack_reports.fetch_add(1, Ordering::Relaxed);
                me.set_goals(&reply)
            }
            Err(e) => debug!(error = %e, "rack report not delivered"),
        }
        tokio::select! {
            _ = tokio::time::sleep(REPORT_EVERY) => {}
            _ = stop.cancelled() => return,
        }
    }
}
