//! What Switchyard's envelope and routing cost the broker: RabbitMQ's CPU
//! time per message (read from `/proc/<beam.smp>/stat`, so the broker must
//! run on this host) for 40,000 confirmed persistent publishes, 64 in
//! flight, each consumed and acknowledged by raw lapin, once per variant
//! named on the command line. A variant is a `+`-joined set of:
//! `topic` (a topic exchange and a pattern binding instead of the default
//! exchange), `props` (content type, message id, timestamp), `headers` (a
//! notification's four headers), `dlx` (a delivery limit and a dead-letter
//! route on the quorum queue, as Switchyard declares its durable queues),
//! `classic` (a classic queue instead of a quorum one); `plain` is none of
//! them. Names, headers and arguments come from `switchyard_messaging`, so
//! the messages are Switchyard's.
//!
//! `cargo run --release -p switchyard-bench --example broker_cost -- plain topic props headers dlx topic+props+headers+dlx`
//! (docs/benchmarks.md, "The broker's share").
use std::time::Instant;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use switchyard_messaging::{
    AmqpConfig, Bound, QueueType, Transport, durable_queue_arguments, wire,
};

/// The broker's user + system CPU seconds so far.
fn broker_cpu() -> anyhow::Result<f64> {
    let out = std::process::Command::new("pgrep")
        .args(["-f", "beam.smp"])
        .output()?;
    let pid = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no beam.smp process on this host"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command's closing parenthesis: utime and stime
    // are the 12th and 13th of them, in clock ticks (100 a second).
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("a short /proc stat line"))?
            .parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = 40_000;
    let id = wire::new_id();
    let config = AmqpConfig::default();
    let transport = Transport::connect(&config, "cost", &id).await?;
    let ch = transport.channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .ok();
    let variants = std::env::args().skip(1).collect::<Vec<_>>();
    for v in variants {
        let topic = v.contains("topic");
        let headers = v.contains("headers");
        let props = v.contains("props");
        let dlx = v.contains("dlx");
        let classic = v.contains("classic");
        let queue = format!("cost-{id}-{v}");
        let exchange = format!("cost-{id}-x");
        let queue_config = AmqpConfig {
            queue_type: if classic {
                QueueType::Classic
            } else {
                QueueType::Quorum
            },
            ..config.clone()
        };
        let dead_letters = wire::dead_letter_queue(&queue);
        let args = durable_queue_arguments(
            &queue_config,
            Bound::Unbounded,
            dlx.then_some(dead_letters.as_str()),
        );
        ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), args)
            .await?;
        let key = if topic {
            ch.exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;
            ch.queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                wire::notification_key("*", "bench.sample").as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
            wire::notification_key("sample", "bench.sample")
        } else {
            queue.clone()
        };
        let cons = transport.channel().await?;
        cons.basic_qos(1024, BasicQosOptions::default()).await?;
        let mut consumer = cons
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let done = tokio::spawn(async move {
            let mut seen = 0;
            while let Some(Ok(d)) = consumer.next().await {
                let _ = d.ack(BasicAckOptions::default()).await;
                seen += 1;
                if seen == n {
                    break;
                }
            }
        });
        let c0 = broker_cpu()?;
        let t0 = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            if set.len() >= 64 {
                set.join_next().await;
            }
            let ch = ch.clone();
            let (exchange, key) = (
                if topic {
                    exchange.clone()
                } else {
                    String::new()
                },
                key.clone(),
            );
            set.spawn(async move {
                let mut p = BasicProperties::default().with_delivery_mode(2);
                if props {
                    p = p
                        .with_content_type(wire::CONTENT_TYPE.into())
                        .with_message_id(wire::new_id().into())
                        .with_timestamp(1);
                }
                if headers {
                    let mut h = FieldTable::default();
                    wire::set_str(&mut h, wire::KIND, wire::kind::NOTIFICATION);
                    wire::set_str(&mut h, wire::EVENT_TYPE, "bench.sample");
                    wire::set_str(&mut h, wire::PRIORITY, "sample");
                    wire::set_str(&mut h, wire::PUBLISHER, "bench");
                    p = p.with_headers(h);
                }
                let body = vec![b'0'; 102];
                if let Ok(c) = ch
                    .basic_publish(
                        exchange.as_str().into(),
                        key.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        p,
                    )
                    .await
                {
                    let _ = c.await;
                }
            });
        }
        while set.join_next().await.is_some() {}
        done.await?;
        let wall = t0.elapsed().as_secs_f64();
        let cpu = broker_cpu()? - c0;
        println!(
            "{v:32} rate {:7.0}/s broker {:6.1} us/msg",
            n as f64 / wall,
            cpu * 1e6 / n as f64
        );
        ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
        if topic {
            let _ = ch
                .exchange_delete(exchange.as_str().into(), Default::default())
                .await;
        }
        cons.close(200, "".into()).await.ok();
    }
    Ok(())
}
