//! Plan `build`: the learner image of an ML repo commit (the first FLOps builder's job).

use super::fl_actors::{build_fl, BuildRequest, FlReport};
use crate::notify::Notifier;
use crate::repo::augment;
use anyhow::Result;

/// `<registry>/<owner>/<repo>/learner:<full commit sha>`.
pub async fn build(req: &BuildRequest, notifier: &Notifier) -> Result<FlReport> {
    build_fl(req, notifier, &[("learner", &augment::LEARNER)]).await
}
