//! `places-fake`: a stand-in for Google's places API on this machine, to try WHATSAT without
//! Google and without a key.
//!
//! It answers every request with a real answer recorded from Google, whatever the position,
//! radius or key asked for:
//!
//! - a `POST` (Places API (New), `places:searchNearby`) with `fixtures/new_ok.json`: five
//!   places in London, in the New API's shape, which herd maps to the legacy one;
//! - anything else, at any path (the legacy Nearby Search, `GET ...?location=&radius=&key=`),
//!   with `fixtures/legacy_ok.json`: twenty places in Richardson, Texas, and a
//!   `next_page_token`, in Google's own layout.
//!
//! ```text
//! cargo run -p places-fake -- [--addr 127.0.0.1:8080]
//! ```
//!
//! It prints one line saying where it listens and the URL to give herd, then serves until
//! it is stopped (Ctrl-C). It keeps nothing of the requests it answers.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use places_fake::{PlacesServer, Reply, Request};

/// Google's legacy Nearby Search answer: 20 results and a `next_page_token`.
const LEGACY_OK: &str = include_str!("../fixtures/legacy_ok.json");

/// A Places API (New) `places:searchNearby` answer: 5 places.
const NEW_OK: &str = include_str!("../fixtures/new_ok.json");

/// Where it listens unless told otherwise.
const DEFAULT_ADDR: &str = "127.0.0.1:8080";

/// The path of Google's legacy Nearby Search, shown in the URL to give herd (any path is
/// answered the same).
const LEGACY_PATH: &str = "/maps/api/place/nearbysearch/json";

const USAGE: &str = "\
usage: places-fake [--addr IP:PORT]

A stand-in for Google's places API, to try WHATSAT without Google and without a key.
Every POST (Places API (New)) is answered with five recorded places in London; any
other request, at any path (the legacy Nearby Search), with twenty recorded places in
Richardson, Texas. The answer is the same wherever the client is.

options:
  --addr IP:PORT  where to listen (default 127.0.0.1:8080)
  -h, --help      print this help

Then start herd with its places URL pointing here, for the legacy API:
  HERD_PLACES__URL=http://127.0.0.1:8080/maps/api/place/nearbysearch/json herd up
or for Places API (New):
  HERD_PLACES__API=new HERD_PLACES__URL=http://127.0.0.1:8080/v1/places:searchNearby herd up";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Args {
    /// Serve on this address.
    Serve(SocketAddr),
    /// Print the usage and exit.
    Help,
}

/// Reads the arguments (without the program's name).
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut addr = None;
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "-h" | "--help" => return Ok(Args::Help),
            "--addr" => args
                .next()
                .ok_or("--addr needs a value, such as 127.0.0.1:8080")?,
            other => match other.strip_prefix("--addr=") {
                Some(value) => value.to_owned(),
                None => return Err(format!("unknown argument {other:?}")),
            },
        };
        let parsed = value
            .parse::<SocketAddr>()
            .map_err(|_| format!("--addr {value:?} is not an address of the form IP:PORT"))?;
        addr = Some(parsed);
    }
    match addr {
        Some(addr) => Ok(Args::Serve(addr)),
        None => DEFAULT_ADDR
            .parse()
            .map(Args::Serve)
            .map_err(|_| "the default address does not parse".to_owned()),
    }
}

/// The answer to `request`: the New API's for a `POST`, the legacy API's for anything else.
fn reply(request: &Request) -> Reply {
    let body = if request.method == "POST" {
        NEW_OK
    } else {
        LEGACY_OK
    };
    Reply::Json(200, body.to_owned())
}

fn main() -> ExitCode {
    // Printing never panics: a closed output (`places-fake --help | head`) is not an error.
    let addr = match parse_args(std::env::args().skip(1)) {
        Ok(Args::Serve(addr)) => addr,
        Ok(Args::Help) => {
            let _ = writeln!(std::io::stdout(), "{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let server = match PlacesServer::serve(addr, reply) {
        Ok(server) => server,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let url = server.url(LEGACY_PATH);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "places-fake listening on {}: start herd with HERD_PLACES__URL={url}",
        server.addr()
    );
    let _ = out.flush();
    drop(out);
    // The server runs on its own thread; this one only keeps the process alive until a
    // signal ends it.
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        parse_args(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn the_address_is_the_default_or_the_one_given() {
        let default: SocketAddr = DEFAULT_ADDR.parse().unwrap();
        assert_eq!(parse(&[]), Ok(Args::Serve(default)));
        let given: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        assert_eq!(parse(&["--addr", "127.0.0.1:9090"]), Ok(Args::Serve(given)));
        assert_eq!(parse(&["--addr=127.0.0.1:9090"]), Ok(Args::Serve(given)));
        assert_eq!(parse(&["--help"]), Ok(Args::Help));
        assert_eq!(parse(&["-h"]), Ok(Args::Help));
        for bad in [
            &["--addr"][..],
            &["--addr", "localhost:80"],
            &["--port", "80"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_post_gets_the_new_api_answer_and_anything_else_the_legacy_one() {
        let request = |method: &str| Request {
            method: method.to_owned(),
            target: "/anywhere".to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        };
        let body = |reply| match reply {
            Reply::Json(200, body) => body,
            other => panic!("{other:?}"),
        };
        assert_eq!(body(reply(&request("POST"))), NEW_OK);
        assert_eq!(body(reply(&request("GET"))), LEGACY_OK);
        assert!(LEGACY_OK.contains("\"status\" : \"OK\""));
        assert!(NEW_OK.contains("\"places\""));
    }
}
