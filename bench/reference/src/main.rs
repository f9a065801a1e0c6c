//! Reference workloads with plain async-nats, printed as one JSON line:
//!   publish-serial URL SUBJECT COUNT PAYLOAD_BYTES
//!   publish-batch  URL SUBJECT COUNT PAYLOAD_BYTES WINDOW
//!   consume        URL STREAM DURABLE COUNT BATCH FILTER
//! Each publish builds a JSON envelope with a fresh UUID and sends it with Nats-Msg-Id,
//! like the bridge; consume fetches, decodes the JSON and acks each message.
//! REFERENCE_RUNTIME=current_thread|multi_thread (default, two workers) picks tokio's runtime.

use std::time::Instant;

use async_nats::jetstream::{self, consumer::PullConsumer, message::PublishMessage};
use futures::stream::{FuturesUnordered, StreamExt};

fn envelope(payload: &str) -> (String, String) {
    let id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::json!({
        "event_id": id, "schema_version": 1, "event_type": "bench.created", "producer": "bench",
        "resource_type": "bench", "resource_id": "1", "occurred_at": "2025-01-01T00:00:00.000Z",
        "trace_id": null, "payload": { "id": 1, "data": payload },
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
    let client = async_nats::connect(args[2].as_str()).await?;
    let js = jetstream::ContextBuilder::new().max_ack_inflight(65_536).build(client);
    let count: usize;
    let started = Instant::now();
    match args[1].as_str() {
        "publish-serial" | "publish-batch" => {
            count = args[4].parse()?;
            let payload = "x".repeat(args[5].parse()?);
            let window: usize = if args[1] == "publish-batch" { args[6].parse()? } else { 1 };
            let mut in_flight = FuturesUnordered::new();
            for _ in 0..count {
                if in_flight.len() >= window {
                    in_flight.next().await.unwrap()?;
                }
                let (id, body) = envelope(&payload);
                let msg = PublishMessage::build().payload(body.into()).message_id(id);
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
