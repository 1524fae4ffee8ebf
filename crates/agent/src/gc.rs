//! Image garbage collection on this node: on a slow timer (`--image-gc-every`) and when a
//! server asks (`POST /v1/agent/images/prune`, for `outpost image prune`).
//!
//! What is kept: every image the servers say the cluster keeps (`GET /v1/images/kept`: the
//! images of every revision a service keeps, the last `revision_history` of each for
//! rollback), and what this node must never drop whatever they say: the images of its own
//! assigned tasks and of everything it runs. The rest goes from the store (`images::Store::prune`:
//! tags, then blobs, sparing writes under way) and, where the Docker Engine pulled it through
//! the mirror and no container uses it, from the Engine. One `image-collected` event says
//! what a collection removed.
//!
//! Never on uncertainty: an agent that cannot ask a server which images are kept collects
//! nothing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use api::{Level, NewEvent};
use tokio::sync::mpsc;

use crate::driver::docker::DockerDriver;
use crate::local::LocalState;
use crate::supervisor::{Running, Update};

/// 10 minutes between collections: a store grows by a deploy at a time, and each collection
/// reads every manifest; `--image-gc-every` changes it.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(600);

/// An hour: a write younger than this (an upload, an interrupted fetch, a blob no manifest
/// names yet) is taken to be under way and is never removed; the timer spares images pushed
/// within it too, so one pushed ahead of its deploy is still there when the deploy comes.
pub const FRESH: Duration = Duration::from_secs(3600);

/// What a collection needs: the store, the servers to ask, and what the node runs.
#[derive(Clone)]
pub struct Collector {
    pub node: String,
    pub store: images::Store,
    pub server: client::Client,
    pub local: Arc<LocalState>,
    pub running: Running,
    pub docker: Option<Arc<DockerDriver>>,
    /// The mirror's address: how the Engine names the images it pulled through it.
    pub mirror: std::net::SocketAddr,
    pub updates: mpsc::UnboundedSender<Update>,
    /// One collection at a time: the timer's and an operator's never interleave.
    pub one: Arc<tokio::sync::Mutex<()>>,
}

impl Collector {
    /// Collects every `every` until the process ends; the first after one period.
    pub async fn run(self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = self.collect(false, false).await {
                tracing::warn!("image collection skipped: {e}");
            }
        }
    }

    /// One collection: what was removed (or, with `dry_run`, would be). `asked` is an
    /// operator's request for now: images pushed within [`FRESH`] are not spared then.
    pub async fn collect(&self, dry_run: bool, asked: bool) -> Result<api::NodePrune, String> {
        let _one = self.one.lock().await;
        let kept = (self.server.kept_images().await).map_err(|e| {
            format!("cannot ask the servers which images the cluster keeps, so nothing was collected: {e}")
        })?;
        let mut keep: BTreeSet<(String, String)> =
            kept.iter().map(|k| store_name(&k.image)).collect();
        keep.extend(self.own_images()?);
        let keep = images::Keep {
            images: keep,
            fresh: FRESH,
            spare_fresh_tags: !asked,
        };
        let store = self.store.clone();
        // Reading manifests and removing files is file work.
        let pruned =
            tokio::task::spawn_blocking(move || store.prune(&keep, SystemTime::now(), dry_run))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        let mut engine_tags = Vec::new();
        if let (false, Some(docker)) = (dry_run, &self.docker) {
            for image in &pruned.images {
                let mirror = self.mirror.to_string();
                match docker
                    .remove_mirrored(&mirror, &image.name, &image.tag)
                    .await
                {
                    Ok(tags) => engine_tags.extend(tags),
                    Err(e) => tracing::warn!("{e}"),
                }
            }
        }
        let answer = api::NodePrune {
            node: self.node.clone(),
            dry_run,
            images: (pruned.images.into_iter())
                .map(|i| api::PrunedImage {
                    name: i.name,
                    tag: i.tag,
                    digest: i.digest.to_string(),
                    bytes: i.bytes,
                })
                .collect(),
            blobs: pruned.blobs.len(),
            bytes: pruned.bytes,
            kept_blobs: pruned.kept,
            partial: pruned.partial,
            engine_tags,
        };
        if !dry_run && (answer.blobs > 0 || answer.partial > 0 || !answer.images.is_empty()) {
            self.tell(&answer);
        }
        Ok(answer)
    }

    /// The images of this node's assigned tasks and of every task it runs.
    fn own_images(&self) -> Result<BTreeSet<(String, String)>, String> {
        let assigned = self.local.all().map_err(|e| e.to_string())?;
        let assigned = assigned.into_iter().map(|t| t.assignment.spec.image);
        let running = (self.running.all().into_iter()).map(|(_, r)| r.launch.spec.image);
        Ok(assigned
            .chain(running)
            .flatten()
            .map(|i| store_name(&i))
            .collect())
    }

    /// One event for the whole collection, sent with the node's next report.
    fn tell(&self, pruned: &api::NodePrune) {
        let event = NewEvent {
            time: crate::supervisor::now(),
            level: Level::Info,
            reason: "image-collected".into(),
            service: None,
            task: None,
            node: Some(self.node.clone()),
            message: summary(pruned),
        };
        let _ = self.updates.send(Update {
            status: None,
            events: vec![event],
            memory_pressure: None,
        });
    }
}

fn store_name(image: &str) -> (String, String) {
    let (name, tag) = images::store_name(image);
    (name.to_string(), tag.to_string())
}

/// "removed 2 images (edge/app:1, edge/app:2), 7 blobs, 12.3 MiB ...": what an event says.
pub fn summary(p: &api::NodePrune) -> String {
    let names: Vec<String> = (p.images.iter())
        .map(|i| format!("{}:{}", i.name, i.tag))
        .collect();
    let mut text = match names.len() {
        0 => "removed no image".to_string(),
        1 => format!("removed 1 image ({})", names[0]),
        n => format!("removed {n} images ({})", names.join(", ")),
    };
    text.push_str(&format!(
        ", {} blobs, {:.1} MiB from the image store",
        p.blobs,
        p.bytes as f64 / (1024.0 * 1024.0)
    ));
    if p.partial > 0 {
        text.push_str(&format!(", {} stale partial writes", p.partial));
    }
    if !p.engine_tags.is_empty() {
        text.push_str(&format!(
            "; from the Docker Engine: {}",
            p.engine_tags.join(", ")
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn with_no_server_to_ask_nothing_is_collected() {
        let dir = tempfile::tempdir().unwrap();
        let store = images::Store::open(&dir.path().join("images")).unwrap();
        let digest = images::Digest::of(b"a layer no service uses");
        store.put(&digest, b"a layer no service uses").unwrap();
        // Nothing listens on a port taken and dropped.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (updates, mut told) = mpsc::unbounded_channel();
        let collector = Collector {
            node: "edge-1".into(),
            store: store.clone(),
            server: client::Client::connect(&format!("http://{port}"), "token", None, None),
            local: Arc::new(LocalState::open(&dir.path().join("agent.redb")).unwrap()),
            running: Running::default(),
            docker: None,
            mirror: "127.0.0.1:5000".parse().unwrap(),
            updates,
            one: Default::default(),
        };
        let err = collector.collect(false, true).await.unwrap_err();
        assert!(err.contains("nothing was collected"), "{err}");
        assert_eq!(store.size(&digest), Some(23), "the blob stays");
        assert!(told.try_recv().is_err(), "no event");
    }

    #[test]
    fn an_event_names_the_images_and_the_bytes_once() {
        let image = |tag: &str| api::PrunedImage {
            name: "edge/app".into(),
            tag: tag.into(),
            digest: "sha256:00".into(),
            bytes: 9,
        };
        let pruned = api::NodePrune {
            node: "edge-1".into(),
            dry_run: false,
            images: vec![image("1"), image("2")],
            blobs: 5,
            bytes: 3 << 20,
            kept_blobs: 4,
            partial: 1,
            engine_tags: vec!["127.0.0.1:5000/edge/app:1".into()],
        };
        assert_eq!(
            summary(&pruned),
            "removed 2 images (edge/app:1, edge/app:2), 5 blobs, 3.0 MiB from the image store, \
             1 stale partial writes; from the Docker Engine: 127.0.0.1:5000/edge/app:1"
        );
    }
}
