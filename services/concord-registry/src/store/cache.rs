//! A read-through cache of people, for the embedded (SQLite) deployment only.
//!
//! Why it is safe: a SQLite database has exactly one writing process, this one, and every
//! write of a person goes through the store, which puts the new version here after it
//! commits. Entries only ever move to a newer version, so a reader that fetched an older row
//! before a write committed cannot put it back. Scope is checked on every hit against the
//! person's own nationalities, the same rule the SQL applies. With PostgreSQL other replicas
//! write too, so there is no cache.
//!
//! Why it exists: a SQLite read costs two thread hand-offs to sqlx's connection worker, which
//! dominated GetPerson's cost in profiles.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::domain::Person;

const SHARDS: usize = 16;

/// People by id, bounded.
#[derive(Debug)]
pub(crate) struct PersonCache {
    shards: Vec<RwLock<HashMap<String, Arc<Person>>>>,
    per_shard: usize,
    /// Counts committed writes. A read fills the cache only if no write committed while it
    /// read: an evicted entry can then never be replaced by an older row read concurrently.
    writes: std::sync::atomic::AtomicU64,
}

impl PersonCache {
    /// A cache holding about `capacity` people.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            per_shard: (capacity / SHARDS).max(1),
            writes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn shard(&self, id: &str) -> &RwLock<HashMap<String, Arc<Person>>> {
        // UUIDv7 ids end in random bits.
        let h = id
            .bytes()
            .rev()
            .take(4)
            .fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(usize::from(b)));
        &self.shards[h % SHARDS]
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<Person>> {
        self.shard(id).read().ok()?.get(id).cloned()
    }

    /// Taken before a database read; pass it to [`PersonCache::put_read`].
    pub(crate) fn read_ticket(&self) -> u64 {
        self.writes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stores a row read from the database, unless a write committed since `ticket`.
    pub(crate) fn put_read(&self, p: &Person, ticket: u64) {
        if self.writes.load(std::sync::atomic::Ordering::SeqCst) == ticket {
            self.put(p);
        }
    }

    /// Stores the version a write just committed.
    pub(crate) fn put_written(&self, p: &Person) {
        self.writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.put(p);
    }

    /// Stores `p` unless a newer version is already there.
    fn put(&self, p: &Person) {
        let Ok(mut shard) = self.shard(&p.id).write() else { return };
        if shard.get(&p.id).is_some_and(|cur| cur.version >= p.version) {
            return;
        }
        if shard.len() >= self.per_shard && !shard.contains_key(&p.id) {
            // Crude but bounded: drop the shard's contents; they are re-read on demand.
            shard.clear();
        }
        shard.insert(p.id.clone(), Arc::new(p.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::*;

    fn person(version: i64) -> Person {
        let data = PersonData {
            names: vec![],
            sex: Sex::Male,
            birth_date: None,
            nationalities: vec![],
            category: Category::AdultMale,
            identity_confidence: Confidence::Low,
            biometric_references: vec![],
            legal_status: None,
        };
        Person { version, ..Person::registered("0192-a".into(), data, 0) }
    }

    #[test]
    fn never_goes_back_to_an_older_version() {
        let c = PersonCache::new(100);
        c.put(&person(3));
        c.put(&person(2));
        assert_eq!(c.get("0192-a").map(|p| p.version), Some(3));
        c.put(&person(4));
        assert_eq!(c.get("0192-a").map(|p| p.version), Some(4));
    }

    #[test]
    fn a_read_that_overlapped_a_write_is_not_cached() {
        let c = PersonCache::new(100);
        let ticket = c.read_ticket();
        c.put_written(&person(2));
        // The entry is evicted (as a full shard would be), then the slow reader returns v1.
        for s in &c.shards {
            s.write().unwrap().clear();
        }
        c.put_read(&person(1), ticket);
        assert!(c.get("0192-a").is_none());
    }

    #[test]
    fn stays_bounded() {
        let c = PersonCache::new(SHARDS * 2);
        for i in 0..1000 {
            let mut p = person(1);
            p.id = format!("id-{i}");
            c.put(&p);
        }
        let total: usize = c.shards.iter().map(|s| s.read().map(|m| m.len()).unwrap_or(0)).sum();
        assert!(total <= SHARDS * 2, "{total}");
    }
}
