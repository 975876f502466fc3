//! `herd-bench echo-server`: the physical-limit reference. A minimal line server that
//! answers every line with a line of the same length, so that a load run against it
//! measures what the machine, the kernel's TCP and the load tool cost, and nothing else.
//!
//! Each answer is the line itself with its first three bytes replaced by `AT ` (lines
//! shorter than that come back as they are), so load tools that count anything but an
//! `AT ` line as an error see none. All the answers to one read go out in one write, from
//! the read buffer itself: no copy, no allocation per line.

use std::io;
use std::time::Duration;

use anyhow::Context as _;
use memchr::{memchr, memrchr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::report;

/// The read buffer's first size.
const INITIAL_BUFFER: usize = 64 * 1024;

/// The longest line accepted; a longer one closes the connection.
const MAX_LINE: usize = 1024 * 1024;

/// How long to wait after a failed accept (out of file descriptors, say).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// `herd-bench echo-server`.
#[derive(Debug, clap::Args)]
pub struct EchoArgs {
    /// Where to listen, IP:PORT (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub addr: String,
}

/// Runs the echo server until Ctrl-C or SIGTERM. Prints `echo-server listening on ADDR`
/// on standard output once it listens.
pub async fn run(args: EchoArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&args.addr)
        .await
        .with_context(|| format!("echo-server: cannot listen on {}", args.addr))?;
    let addr = listener.local_addr().context("echo-server: no address")?;
    report::say(format_args!("echo-server listening on {addr}"))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        _ = accept_loop(listener) => Ok(()),
        result = tokio::signal::ctrl_c() => result.context("cannot listen for Ctrl-C"),
        _ = term.recv() => Ok(()),
    }
}

async fn accept_loop(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(async move {
                    let _ = serve(stream).await;
                });
            }
            Err(e) => {
                report::note(format_args!("echo-server: accept failed: {e}"));
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Answers one connection until the client closes it.
async fn serve(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; INITIAL_BUFFER];
    let mut tail = 0;
    loop {
        if tail == buf.len() {
            if buf.len() >= MAX_LINE {
                return Err(io::Error::other("line too long"));
            }
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream.read(&mut buf[tail..]).await?;
        if n == 0 {
            // A last line without its ending, then the client's half-close: answer it too.
            if tail > 0 {
                buf.truncate(tail);
                buf.push(b'\n');
                answer_lines(&mut buf);
                stream.write_all(&buf).await?;
            }
            return Ok(());
        }
        let scanned = tail;
        tail += n;
        let Some(last) = memrchr(b'\n', &buf[scanned..tail]) else {
            continue;
        };
        let end = scanned + last + 1;
        answer_lines(&mut buf[..end]);
        stream.write_all(&buf[..end]).await?;
        buf.copy_within(end..tail, 0);
        tail -= end;
    }
}

/// Turns whole lines into their answers in place: each line's first three bytes become
/// `AT ` (a line shorter than that, ending included, stays as it is).
fn answer_lines(lines: &mut [u8]) {
    let mut start = 0;
    while let Some(length) = memchr(b'\n', &lines[start..]) {
        if length >= 3 {
            lines[start..start + 3].copy_from_slice(b"AT ");
        }
        start += length + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_keeps_its_length_and_starts_with_at() {
        let mut lines = b"IAMAT kiwi +1+1 1\nhi\n\nWHATSAT x 1 1\r\n".to_vec();
        let before = lines.len();
        answer_lines(&mut lines);
        assert_eq!(lines.len(), before);
        assert_eq!(lines, b"AT AT kiwi +1+1 1\nhi\n\nAT TSAT x 1 1\r\n");
    }
}
