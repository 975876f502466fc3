//! The sending side of a connection, shared by client sessions and herd links: the bytes
//! due to the other end, handed to the socket as fast as it takes them.
//!
//! An actor appends to [`SocketOut::buffer`] and calls [`SocketOut::flush`], which writes
//! what the socket takes at once. When it takes no more, the rest waits: the actor spawns a
//! [`WriteLoop`] in its context, the socket wakes the actor's task once it can take more,
//! and the loop has the actor flush again, until the socket has taken everything. So a
//! write costs no message and no task switch, and a socket that keeps up costs no loop,
//! and a flush that returns has handed the socket everything it would take: the kernel's
//! buffer holds it, or (when the socket is full) it waits here, first in line.
//!
//! It works on any [`AsyncWrite`]: a TCP socket's half, or an encrypted stream, which
//! buffers what it is given and is pushed out by the flush.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use actix::prelude::*;
use bytes::{Buf, BytesMut};
use tokio::io::AsyncWrite;

/// A buffer larger than this is not kept once emptied: a burst is over, and an idle
/// connection should hold no memory for it.
const KEPT_BUFFER_BYTES: usize = 16 * 1024;

/// Bytes due to the other end of a connection, and the socket they go to.
#[derive(Debug)]
pub struct SocketOut<W> {
    /// The socket's sending side.
    half: W,
    /// What the socket has not taken yet.
    buffer: BytesMut,
    /// The owner's task, as its [`WriteLoop`] last saw it: what the socket wakes when it
    /// can take more.
    waker: Option<Waker>,
    /// The socket took less than it was given: flush again when woken.
    blocked: bool,
}

/// What a flush did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// The socket took everything.
    All,
    /// The socket is full; the rest waits for it to take more.
    Blocked,
}

impl<W: AsyncWrite + Unpin> SocketOut<W> {
    /// An empty output for the sending side `half`.
    pub fn new(half: W) -> Self {
        SocketOut {
            half,
            buffer: BytesMut::new(),
            waker: None,
            blocked: false,
        }
    }

    /// Where to append what is due.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buffer
    }

    /// Bytes due that the socket has not taken.
    pub fn len(&self) -> usize {
        self.buffer.len()
    }

    /// Whether the socket has taken everything due.
    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    /// Hands the socket as much as it takes now, and pushes out what a buffering stream
    /// holds. A failed write is the connection's end.
    pub fn flush(&mut self) -> io::Result<Flushed> {
        // Before the write loop first ran, there is no one to wake if the socket is full:
        // the write is tried all the same, and the loop flushes again when it runs.
        let waker = self.waker.as_ref().unwrap_or(Waker::noop());
        let mut task = Context::from_waker(waker);
        while !self.buffer.is_empty() {
            match Pin::new(&mut self.half).poll_write(&mut task, &self.buffer) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => self.buffer.advance(n),
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {
                    self.blocked = true;
                    return Ok(Flushed::Blocked);
                }
            }
        }
        if let Poll::Ready(result) = Pin::new(&mut self.half).poll_flush(&mut task) {
            result?;
        } else {
            self.blocked = true;
            return Ok(Flushed::Blocked);
        }
        self.blocked = false;
        if self.buffer.capacity() > KEPT_BUFFER_BYTES {
            self.buffer = BytesMut::new();
        }
        Ok(Flushed::All)
    }

    /// Remembers the owner's task (from its write loop), to be woken when the socket can
    /// take more.
    pub fn woken(&mut self, waker: &Waker) {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.waker = Some(waker.clone());
        }
    }

    /// Whether the socket was full at the last flush: the rest waits for it.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }
}

/// Spawned in its owner's context while the owner's socket is full, and polled each time
/// the owner's task wakes: `wake`, the owner's own step (it knows which output, and what a
/// failed write means for it), hands the output the task's waker and flushes; the loop ends
/// when `wake` says the socket has taken everything.
pub struct WriteLoop<A: Actor> {
    wake: fn(&mut A, &mut A::Context, &Waker) -> Waiting,
}

/// Whether a [`WriteLoop`] goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// The socket is still full.
    Yes,
    /// It took everything (or the connection is gone): the loop ends.
    No,
}

impl<A: Actor> WriteLoop<A> {
    /// A write loop that calls `wake` with the owner and its task's waker.
    pub fn new(wake: fn(&mut A, &mut A::Context, &Waker) -> Waiting) -> Self {
        WriteLoop { wake }
    }
}

impl<A: Actor> ActorFuture<A> for WriteLoop<A> {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut A,
        ctx: &mut A::Context,
        task: &mut Context<'_>,
    ) -> Poll<()> {
        match (self.wake)(act, ctx, task.waker()) {
            Waiting::Yes => Poll::Pending,
            Waiting::No => Poll::Ready(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// An actor that owns one output, and waits for its socket as sessions and links do.
    struct Writer {
        out: SocketOut<tokio::net::tcp::OwnedWriteHalf>,
        waiting: bool,
    }
    impl Actor for Writer {
        type Context = actix::Context<Self>;
    }
    impl Writer {
        fn flush(&mut self, ctx: &mut actix::Context<Self>) -> Flushed {
            let flushed = self.out.flush().unwrap();
            if flushed == Flushed::Blocked && !std::mem::replace(&mut self.waiting, true) {
                ctx.spawn(WriteLoop::new(|act: &mut Writer, ctx, waker| {
                    act.out.woken(waker);
                    match act.flush(ctx) {
                        Flushed::Blocked => Waiting::Yes,
                        Flushed::All => {
                            act.waiting = false;
                            Waiting::No
                        }
                    }
                }));
            }
            flushed
        }
    }
    #[derive(Message)]
    #[rtype(result = "(Flushed, usize)")]
    struct Send(Vec<u8>);
    impl Handler<Send> for Writer {
        type Result = MessageResult<Send>;
        fn handle(&mut self, Send(bytes): Send, ctx: &mut Self::Context) -> Self::Result {
            self.out.buffer().extend_from_slice(&bytes);
            let flushed = self.flush(ctx);
            MessageResult((flushed, self.out.len()))
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[actix_rt::test]
    async fn a_flush_hands_the_socket_everything_it_takes_before_it_returns() {
        let (reader, writer) = pair().await;
        let (_, half) = writer.into_split();
        let writer = Writer {
            out: SocketOut::new(half),
            waiting: false,
        }
        .start();
        // The bytes are in the socket when the answer comes, readable without waiting for
        // anything else to run.
        let (flushed, left) = writer.send(Send(b"hello\n".to_vec())).await.unwrap();
        assert_eq!((flushed, left), (Flushed::All, 0));
        let mut reader = reader.into_std().unwrap();
        reader.set_nonblocking(true).unwrap();
        let mut got = [0u8; 16];
        let n = std::io::Read::read(&mut reader, &mut got).expect("nothing in the socket");
        assert_eq!(&got[..n], b"hello\n");
    }

    #[actix_rt::test]
    async fn what_a_full_socket_leaves_goes_out_once_it_is_read() {
        let (mut reader, writer) = pair().await;
        let (_, half) = writer.into_split();
        let writer = Writer {
            out: SocketOut::new(half),
            waiting: false,
        }
        .start();
        // Far more than the sockets' buffers: the socket fills and the rest waits.
        let big = vec![b'x'; 32 << 20];
        let (flushed, left) = writer.send(Send(big)).await.unwrap();
        assert_eq!(flushed, Flushed::Blocked);
        assert!(left > 0);
        // As the other end reads, the write loop flushes the rest.
        let mut all = Vec::new();
        while all.len() < 32 << 20 {
            let mut chunk = vec![0u8; 1 << 20];
            let n =
                tokio::time::timeout(std::time::Duration::from_secs(10), reader.read(&mut chunk))
                    .await
                    .expect("the rest never came")
                    .unwrap();
            assert!(n > 0);
            all.extend_from_slice(&chunk[..n]);
        }
        assert!(all.iter().all(|&b| b == b'x'));
    }
}
