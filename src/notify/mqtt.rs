//! MQTT publish (QoS 1, waits for PUBACK) with rumqttc; one short connection per message, so a
//! broker that goes away between phases costs nothing.

use super::Endpoint;
use anyhow::{anyhow, Result};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use std::time::Duration;

/// Largest message we send (mosquitto accepts up to 256 MB by default).
pub const MAX_PACKET: usize = 1 << 20;

pub async fn publish(
    ep: &Endpoint,
    topic: &str,
    payload: &str,
    timeout: Duration,
    attempts: u32,
) -> Result<()> {
    super::retry(attempts, || once(ep, topic, payload, timeout)).await
}

async fn once(ep: &Endpoint, topic: &str, payload: &str, timeout: Duration) -> Result<()> {
    let id = format!(
        "flops-image-builder-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let mut opts = MqttOptions::new(id, &ep.host, ep.port);
    opts.set_keep_alive(Duration::from_secs(10));
    // rumqttc's default limit is 10 kB; a success report of a multi-platform image is larger.
    opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    let (client, mut events) = AsyncClient::new(opts, 10);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
        .await?;
    let wait = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return Ok(()),
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return Err(anyhow!("disconnected")),
                Ok(_) => {}
                Err(e) => return Err(anyhow!("{e}")),
            }
        }
    };
    let r = tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| anyhow!("no PUBACK within {timeout:?}"))?;
    let _ = client.try_disconnect();
    r
}
