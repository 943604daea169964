//! Local snapshot semantics (containerd's contract) over the metadata store
//! and the directory layout. Synchronous; knows nothing of remote layers
//! beyond storing a [`RemoteRecord`] for whoever mounts them.

use crate::error::{Error, Result};
use crate::filter::Filters;
use crate::layout::{self, Layout};
use crate::store::{now_nanos, Record, RemoteRecord, Store};
use crate::types::{Info, Kind, Labels, Mount, Usage};
use crate::{mounts, usage};
use std::collections::HashSet;
use std::path::PathBuf;

/// containerd's limit on one label (key + value bytes).
pub const MAX_LABEL_BYTES: usize = 4096;

pub struct Core {
    layout: Layout,
    store: Store,
}

/// Empty values mean "no label", as in containerd's stores.
fn clean_labels(labels: &Labels) -> Result<Labels> {
    let mut out = Labels::new();
    for (k, v) in labels {
        if k.len() + v.len() > MAX_LABEL_BYTES {
            return Err(Error::InvalidArgument(format!(
                "label {k:?} longer than {MAX_LABEL_BYTES} bytes"
            )));
        }
        if !v.is_empty() {
            out.insert(k.clone(), v.clone());
        }
    }
    Ok(out)
}

impl Core {
    pub fn open(root: &std::path::Path) -> Result<Core> {
        let layout = Layout::create(root)?;
        let store = Store::open(&layout.db_path())?;
        Ok(Core { layout, store })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn get(&self, key: &str) -> Result<Record> {
        self.store
            .get(key)?
            .ok_or_else(|| Error::NotFound(key.to_string()))
    }

    pub fn stat(&self, key: &str) -> Result<Info> {
        Ok(self.get(key)?.info(key))
    }

    /// Creates an active or view snapshot. See [`crate::layout`] for why the
    /// directory is renamed into place before the transaction commits.
    pub fn create(&self, kind: Kind, key: &str, parent: &str, labels: &Labels) -> Result<Record> {
        if key.is_empty() {
            return Err(Error::InvalidArgument("empty key".into()));
        }
        if kind == Kind::Committed {
            return Err(Error::InvalidArgument(
                "cannot create a committed snapshot".into(),
            ));
        }
        let labels = clean_labels(labels)?;
        let tmp = self.layout.new_temp(kind == Kind::Active)?;
        let res = (|| {
            let txn = self.store.begin()?;
            if txn.get(key)?.is_some() {
                return Err(Error::AlreadyExists(key.to_string()));
            }
            if !parent.is_empty() {
                let p = txn
                    .get(parent)?
                    .ok_or_else(|| Error::NotFound(parent.to_string()))?;
                if p.kind != Kind::Committed {
                    return Err(Error::InvalidArgument(format!(
                        "parent {parent:?} is not committed"
                    )));
                }
            }
            let now = now_nanos();
            let rec = Record {
                id: txn.next_id()?,
                kind,
                parent: parent.to_string(),
                labels,
                created: now,
                updated: now,
                remote: None,
                size: 0,
                inodes: 0,
            };
            txn.put(key, &rec)?;
            let dir = self.layout.dir(rec.id);
            self.layout.rename_durable(&tmp, &dir)?;
            if let Err(e) = txn.commit() {
                // The directory has no record: remove it now (start-up would).
                let _ = layout::remove_tree(&dir);
                return Err(e.into());
            }
            Ok(rec)
        })();
        if res.is_err() && tmp.exists() {
            let _ = layout::remove_tree(&tmp);
        }
        res
    }

    /// Commits active `key` as `name`. `remote` marks the result as a remote
    /// layer already mounted on its fs dir (its usage is not walked).
    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: &Labels,
        remote: Option<RemoteRecord>,
    ) -> Result<Record> {
        if name.is_empty() {
            return Err(Error::InvalidArgument("empty name".into()));
        }
        let labels = clean_labels(labels)?;
        let txn = self.store.begin()?;
        let old = txn
            .get(key)?
            .ok_or_else(|| Error::NotFound(key.to_string()))?;
        if old.kind != Kind::Active {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} is not active"
            )));
        }
        if txn.get(name)?.is_some() {
            return Err(Error::AlreadyExists(name.to_string()));
        }
        let u = match remote {
            Some(_) => Usage::default(),
            None => usage::disk_usage(&self.layout.fs(old.id))?,
        };
        let now = now_nanos();
        let rec = Record {
            id: old.id,
            kind: Kind::Committed,
            parent: old.parent,
            labels,
            created: now,
            updated: now,
            remote,
            size: u.size,
            inodes: u.inodes,
        };
        txn.delete(key)?;
        txn.put(name, &rec)?;
        txn.commit()?;
        Ok(rec)
    }

    /// Removes `key` and its directory. A remote layer must have been
    /// unmounted by the caller; any mount left is detached, never deleted
    /// through.
    pub fn remove(&self, key: &str) -> Result<Record> {
        let txn = self.store.begin()?;
        let rec = txn
            .get(key)?
            .ok_or_else(|| Error::NotFound(key.to_string()))?;
        if txn.has_children(key)? {
            // containerd's wording: its snapshotter test suite checks it.
            return Err(Error::FailedPrecondition(format!(
                "failed to remove snapshot {key:?}: cannot remove snapshot with child"
            )));
        }
        txn.delete(key)?;
        let (dir, gone) = (self.layout.dir(rec.id), self.layout.retired_name(rec.id));
        self.layout.rename_durable(&dir, &gone)?;
        if let Err(e) = txn.commit() {
            let _ = self.layout.rename_durable(&gone, &dir);
            return Err(e.into());
        }
        // Metadata is gone; a failure here leaves an orphan for Cleanup.
        if let Err(e) = layout::remove_tree(&gone) {
            tracing::warn!(key, error = %e, "snapshot removed, its directory is left for cleanup");
        }
        Ok(rec)
    }

    /// Updates labels: `paths` empty or `labels` replaces all of them;
    /// `labels.KEY` sets (or, if absent or empty in `info`, removes) one.
    pub fn update(&self, info: &Info, paths: &[String]) -> Result<Info> {
        let txn = self.store.begin()?;
        let mut rec = txn
            .get(&info.name)?
            .ok_or_else(|| Error::NotFound(info.name.clone()))?;
        let mut labels = rec.labels.clone();
        if paths.is_empty() {
            labels = info.labels.clone();
        }
        for p in paths {
            if p == "labels" {
                labels = info.labels.clone();
            } else if let Some(k) = p.strip_prefix("labels.") {
                match info.labels.get(k) {
                    Some(v) => labels.insert(k.to_string(), v.clone()),
                    None => labels.remove(k),
                };
            } else {
                return Err(Error::InvalidArgument(format!(
                    "cannot update field {p:?} of a snapshot"
                )));
            }
        }
        rec.labels = clean_labels(&labels)?;
        rec.updated = now_nanos();
        txn.put(&info.name, &rec)?;
        txn.commit()?;
        Ok(rec.info(&info.name))
    }

    pub fn has_children(&self, key: &str) -> Result<bool> {
        Ok(self.store.all()?.iter().any(|(_, r)| r.parent == key))
    }

    pub fn list(&self, filters: &Filters) -> Result<Vec<Info>> {
        Ok(self
            .store
            .all()?
            .into_iter()
            .map(|(n, r)| r.info(&n))
            .filter(|i| filters.matches(i))
            .collect())
    }

    pub fn all(&self) -> Result<Vec<(String, Record)>> {
        Ok(self.store.all()?)
    }

    pub fn usage(&self, key: &str) -> Result<Usage> {
        let rec = self.get(key)?;
        match (rec.kind, &rec.remote) {
            (Kind::Committed, _) => Ok(Usage {
                size: rec.size,
                inodes: rec.inodes,
            }),
            (_, Some(_)) => Ok(Usage::default()),
            _ => usage::disk_usage(&self.layout.fs(rec.id)),
        }
    }

    /// The committed ancestors of `rec`, nearest first.
    pub fn parents(&self, rec: &Record) -> Result<Vec<(String, Record)>> {
        let mut out: Vec<(String, Record)> = Vec::new();
        let mut next = rec.parent.clone();
        while !next.is_empty() {
            // A cycle cannot be built through the API; guard against a corrupt store.
            if out.len() > 10_000 {
                return Err(Error::FailedPrecondition("parent chain too long".into()));
            }
            let p = self
                .store
                .get(&next)?
                .ok_or_else(|| Error::FailedPrecondition(format!("parent {next:?} is missing")))?;
            let name = std::mem::replace(&mut next, p.parent.clone());
            out.push((name, p));
        }
        Ok(out)
    }

    pub fn mounts_for(
        &self,
        key: &str,
        rec: &Record,
        parents: &[(String, Record)],
    ) -> Result<Vec<Mount>> {
        if rec.kind == Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} is committed, not active or view"
            )));
        }
        let lowers: Vec<PathBuf> = parents.iter().map(|(_, p)| self.layout.fs(p.id)).collect();
        Ok(mounts::build(
            rec.kind,
            self.layout.fs(rec.id),
            self.layout.work(rec.id),
            &lowers,
        ))
    }

    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let rec = self.get(key)?;
        let parents = self.parents(&rec)?;
        self.mounts_for(key, &rec, &parents)
    }

    /// Removes directories that no record accounts for (left by a crash or
    /// a failed removal). Returns what was removed.
    ///
    /// Runs inside a write transaction so that no `create` can be between
    /// renaming its directory into place and committing its record; a
    /// `new-*` directory of this process is a create still building and
    /// is left alone unless `at_start`.
    pub fn cleanup(&self, at_start: bool) -> Result<Vec<PathBuf>> {
        let txn = self.store.begin()?;
        let live: HashSet<u64> = txn.ids()?.into_iter().collect();
        let own = format!("new-{}-", std::process::id());
        let mut removed = Vec::new();
        for o in self.layout.orphans(&live)? {
            let ours = o
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&own));
            if ours && !at_start {
                continue;
            }
            match layout::remove_tree(&o) {
                Ok(()) => removed.push(o),
                // Another caller may be removing the same rm-* right now.
                Err(e) => {
                    tracing::warn!(path = %o.display(), error = %e, "cleanup could not remove")
                }
            }
        }
        drop(txn);
        Ok(removed)
    }
}
