//! The owner of the access partition: decides, journals and applies access events, and
//! lets the access layer read the partition without a message round trip.
//!
//! The partition is small and written rarely (a token issued per login, an admin's
//! change), while every authenticated submission reads it. A mutex held across
//! decide → append → apply gives the same guarantee an actor's turn gives the other
//! partitions: events are applied in log order, and a snapshot copy taken under the lock
//! holds every access event up to the last LSN assigned. Appending only queues the record
//! (no disk wait), so the lock is held for microseconds; callers await durability after.
//!
//! It also answers every authenticated request's question, what may this client do now
//! ([`AccessStore::current`]): a token names its client, and the rights used are the
//! client's current ones, so deleting a client or lowering its rights takes effect at
//! once, not when its tokens expire. With the permissions it keeps the fingerprint of the
//! client's current secret, which a token must carry to be taken, and it says whether the
//! refresh token a token was issued with or from has been revoked.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::actors::PendingSnapshot;
use crate::error::Result;
use crate::journal::{Journal, Ticket};
use crate::model::access::{Access, Permissions, RefreshId};
use crate::model::{Event, FastMap, Name};

/// The access partition and the journal it records to.
pub struct AccessStore {
    /// The partition, and what is derived from it.
    state: Mutex<Held>,
    /// Where its events go.
    journal: Journal,
}

/// What the store's lock guards.
struct Held {
    /// The partition.
    access: Access,
    /// Clients' current permissions as requests carry them, and their current secret's
    /// fingerprint, built on a client's first request since the partition last changed:
    /// every authenticated request asks, and building them clones the client's maps and
    /// hashes its secret hash. Emptied whenever an event is applied (no event kind has to
    /// be known to touch a client, so a new one cannot leave a stale entry), so it only
    /// holds clients that exist: bounded by the clients.
    permissions: FastMap<Name, (Arc<Permissions>, u64)>,
}

/// A client as a request is held to it: its permissions now, the
/// [`crate::model::access::secret_fingerprint`] of its secret now, and whether the
/// refresh token the request's access token names was revoked.
#[derive(Clone, Debug)]
pub struct Current {
    /// What it may do.
    pub permissions: Arc<Permissions>,
    /// Its secret's fingerprint, which its tokens must carry.
    pub secret: u64,
    /// The refresh token asked about was revoked ([`Access::refresh_revoked`]).
    pub refresh_revoked: bool,
}

impl AccessStore {
    /// Owns the recovered `access` partition.
    pub fn new(access: Access, journal: Journal) -> AccessStore {
        AccessStore {
            state: Mutex::new(Held {
                access,
                permissions: FastMap::default(),
            }),
            journal,
        }
    }

    /// Runs `f` over the partition.
    pub fn read<T>(&self, f: impl FnOnce(&Access) -> T) -> T {
        f(&self.state.lock().access)
    }

    /// `client_id`'s permissions and secret fingerprint as they are now, and whether
    /// `refresh` was revoked (`None`: no such client).
    pub fn current(&self, client_id: &str, refresh: RefreshId) -> Option<Current> {
        let mut held = self.state.lock();
        let refresh_revoked = held.access.refresh_revoked(refresh);
        let (permissions, secret) = match held.permissions.get(client_id) {
            Some((permissions, secret)) => (permissions.clone(), *secret),
            None => {
                let (id, client) = held.access.clients.get_key_value(client_id)?;
                let permissions = Arc::new(Permissions::of(id, client));
                let secret = client.secret_fingerprint();
                let id = id.clone();
                held.permissions.insert(id, (permissions.clone(), secret));
                (permissions, secret)
            }
        };
        Some(Current {
            permissions,
            secret,
            refresh_revoked,
        })
    }

    /// Decides an event from the current state, journals it and applies it, atomically.
    /// `Ok(None)` when `decide` finds nothing to record.
    pub fn record(
        &self,
        decide: impl FnOnce(&Access) -> Result<Option<Event>>,
    ) -> Result<Option<Ticket>> {
        self.record_all(|state| Ok(decide(state)?.into_iter().collect()))
    }

    /// Like [`AccessStore::record`] for several events decided together: each is
    /// journalled and applied in order under one lock. Returns the last one's ticket (the
    /// log is written in order, so it being durable means all of them are).
    pub fn record_all(
        &self,
        decide: impl FnOnce(&Access) -> Result<Vec<Event>>,
    ) -> Result<Option<Ticket>> {
        let mut held = self.state.lock();
        let mut last = None;
        for event in decide(&held.access)? {
            last = Some(self.journal.append(&event)?);
            held.access.apply(&event);
            held.permissions.clear();
        }
        Ok(last)
    }

    /// [`AccessStore::record_all`], then waits until durable; whether anything was recorded.
    pub async fn record_all_durably(
        &self,
        decide: impl FnOnce(&Access) -> Result<Vec<Event>>,
    ) -> Result<bool> {
        match self.record_all(decide)? {
            Some(ticket) => {
                self.journal.durable(ticket).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Records and waits until durable.
    pub async fn record_durably(
        &self,
        decide: impl FnOnce(&Access) -> Result<Option<Event>>,
    ) -> Result<bool> {
        self.record_all_durably(|state| Ok(decide(state)?.into_iter().collect()))
            .await
    }

    /// A copy of the partition for a snapshot (see the module docs for why the LSN holds).
    pub fn snapshot(&self) -> PendingSnapshot {
        // Held until the LSN is read: the copy holds every access event up to it.
        let held = self.state.lock();
        let copy = held.access.clone();
        PendingSnapshot {
            lsn: self.journal.last_assigned(),
            encode: Box::new(move |sink| sink.encode(&copy)),
        }
    }
}
