//! How a registry's jobs decode from a snapshot (see `Registry::decode`): the jobs of a
//! queue share one name, and the jobs without exclusions one empty list, as live
//! submissions do.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use serde::de::{Deserializer, Error, Visitor};
use serde::Deserialize;

use crate::model::ids::Name;
use crate::model::FastSet;

thread_local! {
    /// While a registry decodes on this thread: the queue names made so far.
    static NAMES: RefCell<Option<FastSet<Name>>> = const { RefCell::new(None) };
}

/// Names are gathered on this thread from `start` until `finish` or the drop (an error
/// or a panic while decoding), so no decode sees another's names.
pub(super) struct Gathering;

impl Gathering {
    pub(super) fn start() -> Gathering {
        NAMES.with(|names| *names.borrow_mut() = Some(FastSet::default()));
        Gathering
    }

    pub(super) fn finish(self) -> FastSet<Name> {
        NAMES.with(|names| names.borrow_mut().take().unwrap_or_default())
    }
}

impl Drop for Gathering {
    fn drop(&mut self) {
        NAMES.with(|names| names.borrow_mut().take());
    }
}

/// A queue name: the one already made for it while a registry decodes, else new.
pub(super) fn queue<'de, D: Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
    struct Queue;
    impl Visitor<'_> for Queue {
        type Value = Name;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a queue name")
        }
        fn visit_str<E: Error>(self, name: &str) -> Result<Name, E> {
            Ok(NAMES.with(|names| match names.borrow_mut().as_mut() {
                Some(names) => intern(names, name),
                None => Name::from(name),
            }))
        }
    }
    d.deserialize_str(Queue)
}

/// `exclude_agents`: when empty, the list all such jobs share.
pub(super) fn exclude<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<[Name]>, D::Error> {
    let names = Vec::<Name>::deserialize(d)?;
    Ok(if names.is_empty() {
        no_names()
    } else {
        names.into()
    })
}

/// The shared copy of `name` in `names` (added when new).
pub(super) fn intern(names: &mut FastSet<Name>, name: &str) -> Name {
    match names.get(name) {
        Some(shared) => shared.clone(),
        None => {
            let shared = Name::from(name);
            names.insert(shared.clone());
            shared
        }
    }
}

/// The one empty exclusion list all jobs without `exclude_agents` share.
pub fn no_names() -> Arc<[Name]> {
    static EMPTY: std::sync::LazyLock<Arc<[Name]>> = std::sync::LazyLock::new(|| Arc::new([]));
    EMPTY.clone()
}
