//! Plan `build`: the learner image of an ML repo commit (the first FLOps builder's job).

use super::fl_actors::{build_fl, BuildRequest, FlReport, FL_IMAGES};
use crate::notify::Notifier;
use anyhow::Result;

/// `<registry>/<owner>/<repo>/learner:<full commit sha>`: the same image `fl_actors` makes
/// of the commit (one lock for both plans).
pub async fn build(req: &BuildRequest, notifier: &Notifier) -> Result<FlReport> {
    build_fl(req, notifier, &FL_IMAGES[..1]).await
}
