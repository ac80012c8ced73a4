//! Printing results: aligned tables for people, JSON for scripts.

use serde::Serialize;

use crate::cli::{Failure, Output};

/// Prints `value` as pretty JSON, or calls `table` to print it for people.
pub fn print<T: Serialize>(
    output: Output,
    value: &T,
    table: impl FnOnce(&T),
) -> Result<(), Failure> {
    match output {
        Output::Json => {
            let text = serde_json::to_string_pretty(value).map_err(|e| Failure {
                message: format!("cannot encode the answer as JSON: {e}"),
                code: crate::exit::FAILURE,
            })?;
            println!("{text}");
        }
        Output::Table => table(value),
    }
    Ok(())
}

/// Prints rows as columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Unix milliseconds as UTC `YYYY-MM-DD hh:mm:ss.mmm`.
pub fn ms(t: u64) -> String {
    if t == 0 {
        return "-".into();
    }
    let (days, rem) = ((t / 86_400_000) as i64, t % 86_400_000);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, milli) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}.{milli:03}")
}

/// Resolves once standard output is a pipe whose reader has gone (as `tail -f` notices):
/// `poll` reports `POLLERR` on such a pipe. Never resolves for a terminal or a file. The
/// wait runs on a thread of its own, which the process's exit ends.
pub async fn stdout_closed() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("stdout-watch".into())
        .spawn(move || loop {
            let mut fd = libc::pollfd {
                fd: libc::STDOUT_FILENO,
                events: 0,
                revents: 0,
            };
            // SAFETY: one pollfd of our own, for the process's standard output.
            let n = unsafe { libc::poll(&mut fd, 1, -1) };
            if n > 0 {
                // Anything else it reports ends the watch rather than spinning on it.
                if fd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                    let _ = tx.send(());
                }
                return;
            }
            if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return;
            }
        });
    // No thread, or a dropped sender (poll failed): nothing can be told; wait on, as without.
    if spawned.is_ok() && rx.await.is_ok() {
        return;
    }
    std::future::pending::<()>().await
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc() {
        assert_eq!(super::ms(0), "-");
        assert_eq!(super::ms(1), "1970-01-01 00:00:00.001");
        assert_eq!(super::ms(951_782_400_000), "2000-02-29 00:00:00.000");
        assert_eq!(super::ms(1_795_800_934_783), "2026-11-27 17:35:34.783");
    }
}
