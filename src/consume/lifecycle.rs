//! The pull loop's life as Ruby sees it: starting it, taking batches, stopping it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::consume::delivery::Delivery;
use crate::consume::fetch::PULL_EXPIRES;
use crate::consume::pull_loop::{LoopSpec, PullLoop};
use crate::errors::Result;
use crate::topology::ensure;
use crate::wire::connection::Connection;

impl PullLoop {
    /// Provisions the durable (or checks it, or neither, as the mode says) and starts the
    /// task that feeds the loop (pulling, or a push durable's subscription: the durable's
    /// kind decides) and the keepalive task.
    pub async fn start(conn: Arc<Connection>, spec: LoopSpec) -> Result<Arc<PullLoop>> {
        ensure::durable(&conn, &spec.consumer, spec.stream.as_ref(), spec.mode, None).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let push = spec.consumer.push.clone();
        let this = Arc::new(PullLoop::new(conn, spec, rx));
        let fetcher = match push {
            None => tokio::spawn(this.clone().guarded("fetch", this.clone().fetch_loop(tx))),
            Some(delivery) => tokio::spawn(this.clone().guarded("push", this.clone().push_loop(delivery, tx))),
        };
        *crate::sync::lock(&this.fetcher) = Some(fetcher);
        tokio::spawn(this.clone().guarded("keepalive", this.clone().keepalive()));
        Ok(this)
    }

    /// Waits up to `wait` for the first message, then takes what else is ready (up to `max`).
    pub async fn next_batch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        self.check_broken()?;
        self.flush_settled();
        let mut rx = self.prefetch.rx.lock().await;
        let mut batch = Vec::new();
        if self.stopping() {
            return Ok(batch);
        }
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = tokio::time::sleep(wait) => None,
            _ = self.stopped() => None,
            _ = self.wake_on_stop() => None,
        };
        let Some(first) = first else {
            self.check_broken()?; // woken because a task failed
            return Ok(batch);
        };
        batch.push(first);
        while batch.len() < max {
            match rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        self.prefetch.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        self.prefetch.taken.notify_one(); // the fetch task may be waiting for room to pull again
        // Messages given back while queued (give_back_waiting) belong to another worker now.
        let map = crate::sync::lock(&self.settlement.unsettled);
        batch.retain(|d| map.contains_key(&d.id));
        Ok(batch)
    }

    /// Stops fetching (a pull in flight runs out, its late arrivals given back; a push
    /// subscription is drained, what it still brings given back), returns
    /// every prefetched message not yet handed to Ruby to the server at once, and flushes
    /// queued acks.
    pub async fn stop(&self) {
        self.request_stop();
        let fetcher = crate::sync::lock(&self.fetcher).take();
        if let Some(fetcher) = fetcher {
            let _ = tokio::time::timeout(PULL_EXPIRES + Duration::from_secs(3), fetcher).await;
        }
        let mut rx = self.prefetch.rx.lock().await;
        rx.close();
        while let Ok(d) = rx.try_recv() {
            self.release(d.id);
        }
        drop(rx);
        // Inline, not spawned: these must be queued on the connection before the flush.
        let queued = std::mem::take(&mut *crate::sync::lock(&self.settlement.settled));
        for (reply, payload) in queued {
            let _ = self.conn.client.publish(reply, payload).await;
        }
        // Without a connection the flush would wait for one: the settlements stay queued
        // for the reconnect, and what they do not reach is redelivered after ack_wait.
        if self.conn.is_connected() {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.conn.client.flush()).await;
        }
    }
}
