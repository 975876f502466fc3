//! The `herd` binary as a child process, for the tests of the command line: started, its
//! address read from what it prints, and killed if a test ends first.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The binary under test.
pub const HERD: &str = env!("CARGO_BIN_EXE_herd");

/// A child process, killed when dropped (a failed test leaves no server behind).
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    /// Its process id, as text for `kill` and `--pid`.
    pub fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

/// Starts `command` with its standard output piped, and returns it with the address of its
/// first line, `NAME listening on ADDR ...`.
pub fn spawn_listening(command: &mut Command) -> (Running, String) {
    let mut child = Running(command.stdout(Stdio::piped()).spawn().unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).unwrap();
    let addr = first
        .split_whitespace()
        .nth(3)
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_owned();
    (child, addr)
}

/// A blocking connection to a server at `addr`, whose reads give up after 10 s.
pub fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}
