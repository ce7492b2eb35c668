//! Whether declaring a queue again renews its `x-expires` lease, per queue
//! type, on the broker at hand: a durable queue with `x-expires = 4000` and
//! one persistent message (a ten-minute TTL, so only the queue's expiry can
//! remove it) is declared again every 1.5 s for 9 s; each line prints how
//! many messages the declaration found. A queue the broker deleted comes back
//! empty. Why Switchyard's retry queues are classic (docs/scale-out.md,
//! "Retries wait in the broker"; rabbitmq-server#5894).
//!
//! `cargo run -p switchyard-bench --example queue_expiry` (RabbitMQ on
//! 127.0.0.1:5672, the default `amqp.url`).
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::AMQPValue;
use switchyard_messaging::{AmqpConfig, Transport, wire};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = AmqpConfig::default();
    let id = wire::new_id();
    let transport = Transport::connect(&config, "queue-expiry", &id).await?;
    for queue_type in [wire::rabbitmq::CLASSIC, wire::rabbitmq::QUORUM] {
        let name = format!("queue-expiry-{queue_type}-{id}");
        let mut arguments = wire::typed_queue_arguments(queue_type);
        arguments.insert(
            wire::rabbitmq::EXPIRES.into(),
            AMQPValue::LongLongInt(4_000),
        );
        arguments.insert(
            wire::rabbitmq::MESSAGE_TTL.into(),
            AMQPValue::LongLongInt(600_000),
        );
        let channel = transport.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let declare = || {
            channel.queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::durable(),
                arguments.clone(),
            )
        };
        declare().await?;
        channel
            .basic_publish(
                "".into(),
                name.as_str().into(),
                BasicPublishOptions::default(),
                b"waiting",
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await?;
        let started = Instant::now();
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            let found = declare().await?.message_count();
            println!(
                "{queue_type}: declared again at {:.1} s, {found} message(s)",
                started.elapsed().as_secs_f64()
            );
        }
        channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    Ok(())
}
