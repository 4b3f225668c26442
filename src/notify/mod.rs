//! Telling the FLOps manager (MQTT) and the project observer (TCP) what happens.
//! Neither may hang or fail a build: bounded timeouts, a few retries, then a warning.

pub mod mqtt;
pub mod observer;

use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// FLOps' topic prefix for the FL images' builder (the learner-only plan uses it too).
pub const DEFAULT_TOPIC_PREFIX: &str = "flops_manager/fl_actors_image_builder";
/// FLOps' topic prefix for the trained-model image builder.
pub const MODEL_TOPIC_PREFIX: &str = "flops_manager/trained_model_image_builder";
pub const DEFAULT_MQTT_PORT: u16 = 9027;
pub const DEFAULT_OBSERVER_PORT: u16 = 2727;

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// `HOST[:PORT]`.
    pub fn parse(s: &str, default_port: u16) -> anyhow::Result<Self> {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !h.contains(':') => {
                let port = p
                    .parse()
                    .map_err(|_| crate::error::bad_input(format!("invalid port in {s:?}")))?;
                Ok(Self {
                    host: h.to_string(),
                    port,
                })
            }
            _ if !s.is_empty() => Ok(Self {
                host: s.trim_matches(['[', ']']).to_string(),
                port: default_port,
            }),
            _ => Err(crate::error::bad_input("empty host")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Notifier {
    pub project_id: String,
    pub mqtt: Option<Endpoint>,
    pub observer: Option<Endpoint>,
    pub topic_prefix: String,
    /// Per attempt: connect and publish/write each bounded by this.
    pub timeout: Duration,
    pub attempts: u32,
    /// Set once a sink has failed all its attempts: later phase messages skip it, so a dead
    /// broker or observer costs one bounded timeout per build, not one per message.
    mqtt_down: Arc<AtomicBool>,
    observer_down: Arc<AtomicBool>,
}

impl Notifier {
    pub fn new(
        project_id: &str,
        mqtt: Option<Endpoint>,
        observer: Option<Endpoint>,
        topic_prefix: &str,
        timeout: Duration,
    ) -> Self {
        Self {
            project_id: project_id.to_string(),
            mqtt,
            observer,
            topic_prefix: topic_prefix.trim_end_matches('/').to_string(),
            timeout,
            attempts: 3,
            mqtt_down: Arc::default(),
            observer_down: Arc::default(),
        }
    }

    pub fn disabled() -> Self {
        Self::new("", None, None, DEFAULT_TOPIC_PREFIX, Duration::from_secs(2))
    }

    /// Final messages (success/failed) get one attempt even after a sink failed before.
    fn attempts(&self, down: &AtomicBool, last: bool) -> u32 {
        match (down.load(Ordering::Relaxed), last) {
            (false, _) => self.attempts,
            (true, true) => 1,
            (true, false) => 0,
        }
    }

    async fn publish(&self, event: &str, mut payload: Value, last: bool) {
        let Some(ep) = &self.mqtt else { return };
        let attempts = self.attempts(&self.mqtt_down, last);
        if attempts == 0 {
            return;
        }
        payload["flops_project_id"] = json!(self.project_id);
        let topic = format!("{}/{event}", self.topic_prefix);
        if let Err(e) =
            mqtt::publish(ep, &topic, &payload.to_string(), self.timeout, attempts).await
        {
            self.mqtt_down.store(true, Ordering::Relaxed);
            tracing::warn!(
                "MQTT {}:{} {topic}: {e} (the build goes on)",
                ep.host,
                ep.port
            );
        }
    }

    async fn observe_with(&self, message: &str, last: bool) {
        let Some(ep) = &self.observer else { return };
        let attempts = self.attempts(&self.observer_down, last);
        if attempts == 0 {
            return;
        }
        if let Err(e) = observer::send(ep, message, self.timeout, attempts).await {
            self.observer_down.store(true, Ordering::Relaxed);
            tracing::warn!("observer {}:{}: {e} (the build goes on)", ep.host, ep.port);
        }
    }

    /// One line to the observer about a phase.
    pub async fn observe(&self, message: &str) {
        self.observe_with(message, false).await
    }

    /// `what` for the observer ("started building <what>"), `payload` for MQTT (the project
    /// id is added).
    pub async fn started(&self, what: &str, payload: Value) {
        self.observe(&format!("image builder: started building {what}"))
            .await;
        self.publish("started", payload, false).await;
    }

    pub async fn success(&self, report: Value) {
        let image = report
            .pointer("/image/reference")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        self.observe_with(&format!("image builder: pushed {image}"), true)
            .await;
        self.publish("success", report, true).await;
    }

    pub async fn failed(&self, error_msg: &str) {
        self.observe_with(&format!("image builder: failed: {error_msg}"), true)
            .await;
        self.publish("failed", json!({ "error_msg": error_msg }), true)
            .await;
    }
}

/// Retries `f` with a short backoff; the last error wins.
pub(crate) async fn retry<F, Fut>(attempts: u32, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut last = None;
    for i in 0..attempts.max(1) {
        match f().await {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        if i + 1 < attempts {
            tokio::time::sleep(Duration::from_millis(200 << i)).await;
        }
    }
    Err(last.expect("at least one attempt"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("192.168.1.2", 9027).unwrap();
        assert_eq!((e.host.as_str(), e.port), ("192.168.1.2", 9027));
        let e = Endpoint::parse("broker:1883", 9027).unwrap();
        assert_eq!((e.host.as_str(), e.port), ("broker", 1883));
        assert!(Endpoint::parse("h:x", 1).is_err());
    }
}
