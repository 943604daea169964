//! Crash-safe metadata: one redb database, one write transaction per call.
//!
//! Records are keyed by snapshot name (the key of an active/view snapshot or
//! the name of a committed one) and hold a numeric id that names the
//! snapshot's directory. Ids come from a counter stored in the same
//! transaction, so an id is never reused, even after a crash.

use crate::types::{Info, Kind, Labels};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_ID: &str = "next_id";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] redb::Error),
    #[error("corrupt record {name:?}: {source}")]
    Decode {
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

fn db<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(e.into())
}

/// What a remote snapshot needs to be mounted again after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteRecord {
    /// The labels `RemoteFs::mount` was first called with. Kept apart from
    /// the user-visible labels, which `Update` may change.
    pub mount_labels: Labels,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: u64,
    pub kind: Kind,
    #[serde(default)]
    pub parent: String,
    #[serde(default)]
    pub labels: Labels,
    /// Nanoseconds since the epoch.
    pub created: u128,
    pub updated: u128,
    #[serde(default)]
    pub remote: Option<RemoteRecord>,
    /// Disk usage measured at commit (committed snapshots never change).
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub inodes: i64,
}

pub fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn to_time(nanos: u128) -> SystemTime {
    let secs = (nanos / 1_000_000_000) as u64;
    let sub = (nanos % 1_000_000_000) as u32;
    UNIX_EPOCH + Duration::new(secs, sub)
}

impl Record {
    pub fn info(&self, name: &str) -> Info {
        Info {
            name: name.to_string(),
            parent: self.parent.clone(),
            kind: self.kind,
            labels: self.labels.clone(),
            created: to_time(self.created),
            updated: to_time(self.updated),
        }
    }
}

fn decode(name: &str, bytes: &[u8]) -> Result<Record, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        name: name.to_string(),
        source,
    })
}

fn encode(rec: &Record) -> Vec<u8> {
    // Serialising a plain struct of strings and numbers cannot fail.
    serde_json::to_vec(rec).expect("record serialises")
}

pub struct Store {
    db: Database,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let database = Database::create(path).map_err(db)?;
        // Create the tables once so read transactions never see them missing.
        let txn = database.begin_write().map_err(db)?;
        txn.open_table(SNAPSHOTS).map_err(db)?;
        txn.open_table(META).map_err(db)?;
        txn.commit().map_err(db)?;
        Ok(Store { db: database })
    }

    pub fn get(&self, name: &str) -> Result<Option<Record>, StoreError> {
        let txn = self.db.begin_read().map_err(db)?;
        let t = txn.open_table(SNAPSHOTS).map_err(db)?;
        match t.get(name).map_err(db)? {
            Some(v) => Ok(Some(decode(name, v.value())?)),
            None => Ok(None),
        }
    }

    /// Every record, ordered by name.
    pub fn all(&self) -> Result<Vec<(String, Record)>, StoreError> {
        let txn = self.db.begin_read().map_err(db)?;
        let t = txn.open_table(SNAPSHOTS).map_err(db)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(db)? {
            let (k, v) = item.map_err(db)?;
            out.push((k.value().to_string(), decode(k.value(), v.value())?));
        }
        Ok(out)
    }

    /// Starts the single write transaction of one call. Dropping it without
    /// [`Txn::commit`] aborts it.
    pub fn begin(&self) -> Result<Txn, StoreError> {
        Ok(Txn {
            txn: self.db.begin_write().map_err(db)?,
        })
    }
}

pub struct Txn {
    txn: redb::WriteTransaction,
}

impl Txn {
    pub fn get(&self, name: &str) -> Result<Option<Record>, StoreError> {
        let t = self.txn.open_table(SNAPSHOTS).map_err(db)?;
        let r = match t.get(name).map_err(db)? {
            Some(v) => Some(decode(name, v.value())?),
            None => None,
        };
        Ok(r)
    }

    pub fn put(&self, name: &str, rec: &Record) -> Result<(), StoreError> {
        let mut t = self.txn.open_table(SNAPSHOTS).map_err(db)?;
        t.insert(name, encode(rec).as_slice()).map_err(db)?;
        Ok(())
    }

    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        let mut t = self.txn.open_table(SNAPSHOTS).map_err(db)?;
        t.remove(name).map_err(db)?;
        Ok(())
    }

    /// Allocates a fresh id inside this transaction (ids start at 1).
    pub fn next_id(&self) -> Result<u64, StoreError> {
        let mut t = self.txn.open_table(META).map_err(db)?;
        let id = t.get(NEXT_ID).map_err(db)?.map(|v| v.value()).unwrap_or(1);
        t.insert(NEXT_ID, id + 1).map_err(db)?;
        Ok(id)
    }

    /// Whether any snapshot names `name` as its parent. A scan: stores hold
    /// thousands of snapshots at most and removal is rare.
    pub fn has_children(&self, name: &str) -> Result<bool, StoreError> {
        let t = self.txn.open_table(SNAPSHOTS).map_err(db)?;
        for item in t.iter().map_err(db)? {
            let (k, v) = item.map_err(db)?;
            if decode(k.value(), v.value())?.parent == name {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn ids(&self) -> Result<Vec<u64>, StoreError> {
        let t = self.txn.open_table(SNAPSHOTS).map_err(db)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(db)? {
            let (k, v) = item.map_err(db)?;
            out.push(decode(k.value(), v.value())?.id);
        }
        Ok(out)
    }

    pub fn commit(self) -> Result<(), StoreError> {
        self.txn.commit().map_err(db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, parent: &str) -> Record {
        Record {
            id,
            kind: Kind::Committed,
            parent: parent.into(),
            labels: Labels::new(),
            created: now_nanos(),
            updated: now_nanos(),
            remote: None,
            size: 0,
            inodes: 0,
        }
    }

    #[test]
    fn ids_survive_reopen_and_aborted_txns_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.redb");
        {
            let s = Store::open(&path).unwrap();
            let t = s.begin().unwrap();
            assert_eq!(t.next_id().unwrap(), 1);
            t.put("a", &rec(1, "")).unwrap();
            t.commit().unwrap();
            let t = s.begin().unwrap();
            assert_eq!(t.next_id().unwrap(), 2);
            t.put("b", &rec(2, "a")).unwrap();
            drop(t); // aborted
            assert!(s.get("b").unwrap().is_none());
        }
        let s = Store::open(&path).unwrap();
        let t = s.begin().unwrap();
        assert_eq!(t.next_id().unwrap(), 2);
        assert!(!t.has_children("a").unwrap());
        t.put("b", &rec(2, "a")).unwrap();
        assert!(t.has_children("a").unwrap());
        t.commit().unwrap();
        let all = s.all().unwrap();
        assert_eq!(
            all.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }
}
