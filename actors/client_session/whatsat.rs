//! A session's WHATSAT: the client's record from the store, a search around it by the
//! places proxy, and the answer in the line's place.

use std::sync::Arc;
use std::time::SystemTime;

use actix::prelude::*;

use super::ClientSession;
use crate::actors::location_store::Lookup;
use crate::actors::places_proxy::{NearbySearch, PlacesAnswer};
use crate::answer_queue::Answer;
use crate::places_json::{self, UNKNOWN_ERROR};
use crate::protocol::{self, Whatsat};

impl ClientSession {
    /// Starts working out the answer of line `slot`, a WHATSAT (`line`, received at
    /// `received`); the answer takes its place in line once the places proxy answered.
    pub(super) fn whatsat(
        &mut self,
        slot: u64,
        whatsat: Whatsat<'_>,
        line: &[u8],
        received: SystemTime,
        ctx: &mut Context<Self>,
    ) {
        // The lookup must see the records of the lines before it.
        self.offer_records(ctx);
        self.settings.metrics.lines.whatsat.inc();
        self.settings.metrics.store_backlog.inc();
        let metrics = Arc::clone(&self.settings.metrics);
        let lookup = self.services.lookup.send(Lookup(whatsat.client.into()));
        let places = self.services.places.clone();
        let (radius, bound) = (whatsat.radius, whatsat.bound);
        // About a client the server has not heard of: invalid, as only the store
        // can tell.
        let unknown = protocol::invalid_answer(line);
        self.whatsats_in_flight += 1;
        let answer = async move {
            let Ok(Some(record)) = lookup.await else {
                return Err(unknown);
            };
            let Some(position) = record.position() else {
                return Err(unknown);
            };
            let search = NearbySearch {
                position,
                radius,
                bound,
            };
            metrics.places_backlog.inc();
            let json = match places.send(search).await {
                Ok(PlacesAnswer(json)) => json,
                Err(_) => places_json::error_answer(
                    UNKNOWN_ERROR,
                    "the server's places proxy is not running",
                ),
            };
            Ok(protocol::whatsat_answer(&record, &json))
        };
        ctx.spawn(answer.into_actor(self).map(move |answer, act, ctx| {
            act.whatsats_in_flight -= 1;
            let answer = match answer {
                Ok(answer) => Answer::Text(answer.into()),
                Err(unknown) => {
                    let line = invalid_line(&unknown).as_bytes();
                    act.settings.log.invalid_in(act.conn, received, line);
                    Answer::Invalid(unknown.into())
                }
            };
            act.fill(slot, answer);
            act.flush(ctx);
        }));
    }
}

/// The line an invalid line's answer (`? <line>\n`) repeats.
fn invalid_line(answer: &str) -> &str {
    let line = answer.strip_prefix("? ").unwrap_or(answer);
    line.strip_suffix('\n').unwrap_or(line)
}
