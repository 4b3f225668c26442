//! Progress on a terminal: byte bars for downloads and uploads, a spinner per phase. When
//! stderr is not a terminal (containerd logs, CI) every handle here is a no-op and the plain
//! timestamped log lines are the progress.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::OnceLock;
use std::time::Duration;

static MULTI: OnceLock<Option<MultiProgress>> = OnceLock::new();

/// Turns bars on when `enabled` (stderr is a terminal and output is not quiet). Call once.
pub fn init(enabled: bool) {
    let _ =
        MULTI.set(enabled.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())));
}

fn multi() -> Option<&'static MultiProgress> {
    MULTI.get().and_then(Option::as_ref)
}

/// A bar or a spinner; does nothing when progress is off.
#[derive(Clone, Default)]
pub struct Bar(Option<ProgressBar>);

impl Bar {
    /// Bytes with rate, e.g. "downloading wheels".
    pub fn bytes(label: &str, total: u64) -> Self {
        Bar(multi().map(|m| {
            let b = m.add(ProgressBar::new(total));
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} {msg:<22} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .expect("template")
                .progress_chars("=> "),
            );
            b.set_message(label.to_string());
            b
        }))
    }

    pub fn spinner(label: &str) -> Self {
        Bar(multi().map(|m| {
            let b = m.add(ProgressBar::new_spinner());
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("template"),
            );
            b.set_message(label.to_string());
            b.enable_steady_tick(Duration::from_millis(120));
            b
        }))
    }

    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }

    pub fn grow(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc_length(n);
        }
    }

    pub fn done(&self) {
        if let Some(b) = &self.0 {
            b.finish();
        }
    }
}

/// The download bar shared by every wheel download (grows as downloads are planned).
static DOWNLOADS: OnceLock<Bar> = OnceLock::new();

pub fn downloads() -> &'static Bar {
    DOWNLOADS.get_or_init(|| Bar::bytes("downloading wheels", 0))
}

/// The upload bar shared by every blob of a push (grows as uploads start).
static UPLOADS: OnceLock<Bar> = OnceLock::new();

pub fn uploads() -> &'static Bar {
    UPLOADS.get_or_init(|| Bar::bytes("uploading blobs", 0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn without_a_terminal_bars_are_no_ops() {
        super::init(false);
        let b = super::Bar::bytes("x", 10);
        b.inc(5);
        b.done();
        assert!(b.0.is_none());
    }
}
