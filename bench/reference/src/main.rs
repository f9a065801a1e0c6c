//! Reference workloads with plain async-nats, printed as one JSON line:
//!   publish-serial URL SUBJECT COUNT PAYLOAD_BYTES
//!   publish-batch  URL SUBJECT COUNT PAYLOAD_BYTES WINDOW [prebuilt]
//!                  (prebuilt: one body built once and sent COUNT times, each with a fresh
//!                  Nats-Msg-Id: the wire rate, without building)
//!   consume        URL STREAM DURABLE COUNT BATCH FILTER
//!   publish-until-eof URLS SUBJECT BATCH PAUSE_MS TIMEOUT_MS
//!                  (the cluster spec's reference: publishes batches until stdin closes,
//!                  re-sending what failed at once, and prints the longest gap between acks)
//! Each publish builds a JSON envelope with a fresh UUID around the realistic payload the
//! bridge's benchmarks publish (bench/support.rb: twelve fields, non-ASCII, quotes, a
//! nested object and an array; PAYLOAD_BYTES is the length of its `bio`), and sends it
//! with Nats-Msg-Id, like the bridge; consume fetches, decodes the JSON and acks each
//! message.
//! REFERENCE_RUNTIME=current_thread|multi_thread (default, two workers) picks tokio's runtime.

use std::time::Instant;

use async_nats::jetstream::{self, consumer::PullConsumer, message::PublishMessage};
use futures::stream::{FuturesUnordered, StreamExt};

fn envelope(bio: &str) -> (String, String) {
    let id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::json!({
        "event_id": id, "schema_version": 1, "event_type": "user.updated", "producer": "bench",
        "resource_type": "user", "resource_id": "1", "occurred_at": "2025-01-01T00:00:00.000Z",
        "trace_id": null, "payload": {
            "id": 1, "email": "someone@example.com", "name": "Zoë \"Ada\" O'Brien", "bio": bio,
            "age": 37, "score": 4.75, "active": true, "deleted_at": null, "locale": "pl-PL",
            "address": { "city": "Kraków", "zip": "30-001", "lines": ["ul. Długa 1", "m. 2"] },
            "tags": ["a", "b", "c"], "signup": "2025-01-01T00:00:00Z",
        },
    })
    .to_string();
    (id, body)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    // Which of tokio's runtimes: one thread driving everything, or two workers.
    let mut runtime = match std::env::var("REFERENCE_RUNTIME").as_deref() {
        Ok("current_thread") => tokio::runtime::Builder::new_current_thread(),
        Ok("multi_thread") | Err(_) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            b
        }
        Ok(other) => return Err(format!("REFERENCE_RUNTIME must be current_thread or multi_thread, not {other:?}").into()),
    };
    runtime.enable_all().build()?.block_on(run())
}

async fn run() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if args[1] == "publish-until-eof" {
        return publish_until_eof(&args).await;
    }
    let client = async_nats::connect(args[2].as_str()).await?;
    let js = jetstream::ContextBuilder::new().max_ack_inflight(65_536).build(client);
    let count: usize;
    let started = Instant::now();
    match args[1].as_str() {
        "publish-serial" | "publish-batch" => {
            count = args[4].parse()?;
            let payload = "x".repeat(args[5].parse()?);
            let window: usize = if args[1] == "publish-batch" { args[6].parse()? } else { 1 };
            let prebuilt = (args.get(7).map(String::as_str) == Some("prebuilt")).then(|| bytes::Bytes::from(envelope(&payload).1));
            let mut in_flight = FuturesUnordered::new();
            for _ in 0..count {
                if in_flight.len() >= window {
                    in_flight.next().await.unwrap()?;
                }
                let (id, body) = match &prebuilt {
                    Some(body) => (uuid::Uuid::new_v4().to_string(), body.clone()),
                    None => {
                        let (id, body) = envelope(&payload);
                        (id, bytes::Bytes::from(body))
                    }
                };
                let msg = PublishMessage::build().payload(body).message_id(id);
                in_flight.push(std::future::IntoFuture::into_future(js.send_publish(args[3].clone(), msg).await?));
            }
            while let Some(r) = in_flight.next().await {
                r?;
            }
        }
        "consume" => {
            count = args[5].parse()?;
            let batch: usize = args[6].parse()?;
            let stream = js.get_stream(&args[3]).await?;
            let consumer: PullConsumer = stream
                .get_or_create_consumer(
                    &args[4],
                    jetstream::consumer::pull::Config {
                        durable_name: Some(args[4].clone()),
                        filter_subject: args[7].clone(),
                        ack_policy: jetstream::consumer::AckPolicy::Explicit,
                        max_ack_pending: 1024,
                        ..Default::default()
                    },
                )
                .await?;
            let mut messages = consumer.stream().max_messages_per_batch(batch).messages().await?;
            let mut seen = 0;
            while seen < count {
                let message = messages.next().await.ok_or("stream ended")??;
                let event: serde_json::Value = serde_json::from_slice(&message.payload)?;
                assert!(event.is_object());
                message.ack().await.map_err(|e| e.to_string())?;
                seen += 1;
            }
        }
        other => return Err(format!("unknown mode {other}").into()),
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{{\"count\":{count},\"seconds\":{secs},\"rate\":{}}}", count as f64 / secs);
    Ok(())
}

/// Publishes batches of BATCH events (acks awaited with a TIMEOUT_MS bound each), PAUSE_MS
/// apart, until stdin closes; an event whose publish failed is sent again at once, with the
/// same id. Prints how many were acked and the longest time between two acked batches.
async fn publish_until_eof(args: &[String]) -> Result<(), BoxError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    let urls: Vec<async_nats::ServerAddr> = args[2].split(',').map(str::parse).collect::<Result<_, _>>()?;
    let (subject, batch, pause, timeout) = (args[3].clone(), args[4].parse::<usize>()?, args[5].parse::<u64>()?, args[6].parse::<u64>()?);
    let client = async_nats::ConnectOptions::new().max_reconnects(None).connect(urls).await?;
    let js = jetstream::ContextBuilder::new().timeout(Duration::from_millis(timeout)).build(client);
    let eof = Arc::new(AtomicBool::new(false));
    std::thread::spawn({
        let eof = eof.clone();
        move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            eof.store(true, Ordering::Release);
        }
    });
    let payload = "x".repeat(100);
    let (mut pending, mut acked, mut last_ack, mut longest) = (Vec::new(), 0usize, None::<Instant>, 0f64);
    while !eof.load(Ordering::Acquire) {
        while pending.len() < batch {
            pending.push(envelope(&payload));
        }
        let mut in_flight = FuturesUnordered::new();
        for (id, body) in pending.drain(..) {
            let msg = PublishMessage::build().payload(body.clone().into()).message_id(id.clone());
            let js = js.clone();
            let subject = subject.clone();
            in_flight.push(async move {
                let sent = js.send_publish(subject, msg).await;
                let ok = match sent {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                (ok, id, body)
            });
        }
        let mut any = false;
        while let Some((ok, id, body)) = in_flight.next().await {
            if ok {
                acked += 1;
                any = true;
            } else {
                pending.push((id, body));
            }
        }
        if any {
            let now = Instant::now();
            if let Some(last) = last_ack {
                longest = f64::max(longest, now.duration_since(last).as_secs_f64());
            }
            last_ack = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    println!("{{\"acked\":{acked},\"longest_gap\":{longest}}}");
    Ok(())
}
