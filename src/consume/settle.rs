//! Settlement: acks, NAKs and terms queued by Ruby threads and sent together; progress
//! acks that keep unsettled messages alive; giving back the messages waiting behind a
//! handler that has outlasted ack_wait; and letting go of the message of a handler stuck
//! past max_handler_time.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::Subject;
use bytes::Bytes;

use crate::consume::pull_loop::PullLoop;

/// How a message is settled.
#[derive(Debug, Clone, Copy)]
pub enum Settle {
    Ack,
    Nak(Option<Duration>),
    Term,
}

impl PullLoop {
    /// Sends progress acks for messages still unsettled after a third of ack_wait, so a
    /// slow handler (or a message waiting behind one) is not redelivered elsewhere. When
    /// the handler has outlasted ack_wait (hung, perhaps), only its own messages are kept:
    /// those waiting behind it are given back for another worker (give_back_waiting).
    pub(super) async fn keepalive(self: Arc<Self>) {
        let ack_wait = self.spec.consumer.ack_wait;
        let interval = (ack_wait / 3).max(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval / 2) => {}
                _ = self.stopped() => return,
            }
            let running: Vec<(u64, Instant)> = crate::sync::lock(&self.settlement.running).iter().map(|(id, since)| (*id, *since)).collect();
            // Overdue past ack_wait, or once stuck (max_handler_time may be the shorter):
            // when every handler thread is, nothing waiting would be handled in time.
            let overdue_limit = ack_wait.min(self.spec.max_handler_time);
            let overdue = running.iter().filter(|(_, since)| since.elapsed() >= overdue_limit).count();
            if overdue > 0 && overdue >= self.spec.concurrency {
                // Again at every tick: a pull request made before it was overdue may
                // still deliver (a redelivery of the handler's own message, even).
                let first = !self.settlement.overdue.swap(true, Ordering::AcqRel);
                self.give_back_waiting(first);
                if first {
                    self.prefetch.taken.notify_one(); // a push subscription takes no more
                }
            }
            let stuck: HashSet<u64> = running.iter().filter(|(_, since)| since.elapsed() >= self.spec.max_handler_time).map(|(id, _)| *id).collect();
            let newly_stuck: Vec<(u64, Instant)> = {
                let mut reported = crate::sync::lock(&self.settlement.stuck);
                running.iter().filter(|(id, _)| stuck.contains(id) && reported.insert(*id)).copied().collect()
            };
            for (id, since) in newly_stuck {
                self.report_stuck(id, since);
            }
            // Acks of a handler that is slow to come back for the next batch go out here.
            self.flush_settled();
            let due: Vec<Subject> = {
                let mut map = crate::sync::lock(&self.settlement.unsettled);
                let now = Instant::now();
                map.iter_mut()
                    .filter(|(id, u)| now.duration_since(u.last_progress) >= interval && !stuck.contains(id))
                    .filter_map(|(_, u)| {
                        u.last_progress = now;
                        u.message.reply.clone()
                    })
                    .collect()
            };
            for reply in due {
                let _ = self.conn.client.publish(reply, Bytes::from_static(b"+WPI")).await;
            }
        }
    }

    /// NAKs (no delay) every message not handed to the handler yet: those in Ruby's batch
    /// behind the one in hand (Ruby skips them, `claim` says they are gone) and those
    /// prefetched. A hung handler then holds one message, not two batches. `report`: log it.
    pub(super) fn give_back_waiting(&self, report: bool) {
        let waiting: Vec<u64> = {
            let map = crate::sync::lock(&self.settlement.unsettled);
            map.iter().filter(|(_, u)| !u.claimed).map(|(id, _)| *id).collect()
        };
        for id in &waiting {
            self.release(*id);
        }
        if !report {
            return;
        }
        let oldest = crate::sync::lock(&self.settlement.running).iter().min_by_key(|(_, since)| **since).map(|(id, since)| (*id, *since));
        if let Some((id, since)) = oldest {
            self.log(
                "warn",
                "handler_overdue",
                format!(
                    "handler on {} has been running for {:.1}s (past ack_wait or max_handler_time, message {id}): {} waiting message(s) given back to the server, no more fetched until it returns",
                    self.spec.consumer.filter_subject,
                    since.elapsed().as_secs_f64(),
                    waiting.len()
                ),
            );
        }
    }

    /// Logs `handler_stuck`, naming the event (its Nats-Msg-Id), subject and time.
    fn report_stuck(&self, id: u64, since: Instant) {
        let (subject, event_id, seq) = match crate::sync::lock(&self.settlement.unsettled).get(&id) {
            Some(u) => {
                let event_id = u.message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.to_string());
                (u.message.subject.to_string(), event_id.unwrap_or_else(|| "(no id)".into()), u.stream_seq)
            }
            None => return, // settled meanwhile
        };
        self.log(
            "error",
            "handler_stuck",
            format!(
                "handler stuck: running for {:.1}s, past max_handler_time ({:.1}s), with event {event_id} on {subject} (stream seq {seq}): its message is no longer kept alive, so the server delivers it again after ack_wait",
                since.elapsed().as_secs_f64(),
                self.spec.max_handler_time.as_secs_f64()
            ),
        );
    }

    /// Whether a handler running now has outlasted max_handler_time.
    pub fn handler_stuck(&self) -> bool {
        let limit = self.spec.max_handler_time;
        crate::sync::lock(&self.settlement.running).values().any(|since| since.elapsed() >= limit)
    }

    /// Ruby is about to run the handler for this message: it joins the running ones.
    /// False when it was given back meanwhile (the handler must not run: another worker
    /// has it now).
    pub fn claim(&self, id: u64) -> bool {
        let mut map = crate::sync::lock(&self.settlement.unsettled);
        let Some(u) = map.get_mut(&id) else { return false };
        u.claimed = true;
        drop(map);
        crate::sync::lock(&self.settlement.running).insert(id, Instant::now());
        true
    }

    /// The headers of an unsettled message as (name, value) pairs, one per name (the
    /// first value: wire/headers.rs); None once settled.
    pub fn headers(&self, id: u64) -> Option<Vec<(String, String)>> {
        let map = crate::sync::lock(&self.settlement.unsettled);
        let headers = map.get(&id)?.message.headers.as_ref();
        Some(headers.map_or_else(Vec::new, |h| crate::wire::headers::first_values(crate::wire::headers::pairs_of(h))))
    }

    /// The handler of this message has returned (its ack may follow later, after the
    /// inbox's batch commits): it no longer counts as running.
    pub fn returned(&self, id: u64) {
        let removed = crate::sync::lock(&self.settlement.running).remove(&id).is_some();
        crate::sync::lock(&self.settlement.stuck).remove(&id);
        // A thread is free again: messages may be pulled and handled in time.
        if removed && self.settlement.overdue.swap(false, Ordering::AcqRel) {
            self.prefetch.taken.notify_one(); // the fetch task may pull again
        }
    }

    /// Queues the settlement of a message; it is sent with the next `flush_settled`
    /// (at the next batch, within a keepalive tick, or at stop). Returns false when the
    /// id is unknown (already settled).
    pub fn settle(&self, id: u64, how: Settle) -> bool {
        let Some(u) = crate::sync::lock(&self.settlement.unsettled).remove(&id) else {
            return false;
        };
        let payload: Bytes = match how {
            Settle::Ack => Bytes::from_static(b"+ACK"),
            Settle::Nak(None) => Bytes::from_static(b"-NAK"),
            // The delay is nanoseconds on the wire.
            Settle::Nak(Some(d)) => format!("-NAK {{\"delay\":{}}}", d.as_nanos()).into(),
            Settle::Term => Bytes::from_static(b"+TERM"),
        };
        let given_back_until = match how {
            Settle::Ack | Settle::Term => None,
            Settle::Nak(delay) => Some(Instant::now() + delay.unwrap_or_default() + self.spec.consumer.ack_wait),
        };
        self.position.settled(u.stream_seq, given_back_until);
        self.returned(id);
        if let Some(reply) = u.message.reply {
            crate::sync::lock(&self.settlement.settled).push((reply, payload));
        }
        true
    }

    /// Sends every queued settlement from one task on the process runtime.
    pub fn flush_settled(&self) {
        let queued = std::mem::take(&mut *crate::sync::lock(&self.settlement.settled));
        if queued.is_empty() {
            return;
        }
        let client = self.conn.client.clone();
        // Called from Ruby threads too: spawn on the loop's runtime, not the ambient one.
        self.runtime.spawn(async move {
            for (reply, payload) in queued {
                let _ = client.publish(reply, payload).await;
            }
        });
    }

    pub(super) fn release(&self, id: u64) {
        self.settle(id, Settle::Nak(None));
    }
}
