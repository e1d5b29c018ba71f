//! `flinger client ...`: client management on the data directory while the server is
//! stopped (the log's directory lock refuses a second writer, so it cannot run beside a
//! server). Changes are ordinary access events, journalled and durable before the
//! command reports success; the running server's API (`/v1/client-permissions`) does the
//! same online.
//!
//! A generated secret is printed once on stdout and never logged; refresh tokens go only
//! into the token file (mode 0600).

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::json;

use super::store::AccessStore;
use super::token;
use crate::actors::now;
use crate::config::{ClientAction, Config};
use crate::error::{Error, Result};
use crate::model::access::{Client, Role};
use crate::model::{Event, Name};

/// Runs one client command against `config.data_dir`, writing its report to `out`.
pub async fn run(config: &Config, action: &ClientAction, out: &mut impl Write) -> Result<()> {
    // Only `add` may start a data directory (the first admin is made before the first
    // start). Any other command on a directory that does not exist was pointed at the wrong
    // place (a `--data-dir` after `client` is refused by the parser, so the default
    // `./data` is a common accident): say so instead of creating an empty one. The
    // PostgreSQL journal keeps nothing in the data directory.
    // What can be checked without the data directory is, so a mistyped command creates
    // nothing.
    if let ClientAction::Add {
        email: Some(email), ..
    } = action
    {
        if let Some(problem) = token::email_problem(email) {
            return Err(Error::InvalidInput(format!(
                "--email {email:?} is not a valid email address: {problem}"
            )));
        }
    }
    let file_log = matches!(config.journal, crate::config::JournalTarget::File);
    if file_log && !matches!(action, ClientAction::Add { .. }) && !config.data_dir.exists() {
        return Err(Error::NotFound(format!(
            "no data directory at {}: name the server's with `flinger --data-dir DIR client ...` \
             (before `client`) or DATA_PATH in the config file",
            config.data_dir.display()
        )));
    }
    let open_config = config.clone();
    let (mut state, journal, _snapshots, _) =
        tokio::task::spawn_blocking(move || crate::journal::open(&open_config))
            .await
            .map_err(|e| Error::Internal(format!("recovery task failed: {e}")))?
            .map_err(|e| match e {
                // A data directory that cannot be one: the hint below would mislead.
                Error::Misconfigured(_) => e,
                e => Error::Unavailable(format!(
                    "{e} (`flinger client` needs the data directory to itself: stop the server \
                     first, or change clients through the running server's /v1/client-permissions)"
                )),
            })?;
    let store = AccessStore::new(std::mem::take(&mut state.access), journal.clone());
    let result = act(&store, action, out).await;
    journal.close().await;
    result
}

fn pairs(field: &str, items: &[String]) -> Result<BTreeMap<String, i64>> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .and_then(|(k, v)| Some((k.to_owned(), v.trim().parse::<i64>().ok()?)))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| {
                    Error::InvalidInput(format!("--{field} expects QUEUE=NUMBER, got {item:?}"))
                })
        })
        .collect()
}

async fn act(store: &AccessStore, action: &ClientAction, out: &mut impl Write) -> Result<()> {
    match action {
        ClientAction::Add {
            client_id,
            role,
            max_priority,
            max_reservation,
            email,
        } => {
            let role = role
                .as_deref()
                .map(|role| {
                    Role::parse(role).ok_or_else(|| {
                        Error::InvalidInput(format!(
                            "unknown role {role:?}: admin, manager, contributor or agent"
                        ))
                    })
                })
                .transpose()?;
            if let Some(problem) = token::client_id_problem(client_id) {
                return Err(Error::InvalidInput(problem.into()));
            }
            let max_priority = pairs("max-priority", max_priority)?;
            let max_reservation = pairs("max-reservation", max_reservation)?;
            let secret = token::random_text(32);
            let hashed = secret.clone();
            let hash = tokio::task::spawn_blocking(move || token::hash_secret(&hashed))
                .await
                .map_err(|e| Error::Internal(format!("bcrypt task failed: {e}")))??;
            let mut created = false;
            let mut revoked = 0;
            let mut saved_role = Role::Contributor;
            store
                .record_durably(|access| {
                    let existing = access.client(client_id);
                    created = existing.is_none();
                    // A new secret ends the refresh tokens issued with the old one
                    // (`model::access`): the output says so, since a token file of this
                    // client stops working.
                    revoked = access
                        .tokens_by_client
                        .get(client_id.as_str())
                        .map_or(0, |tokens| tokens.len());
                    // A new secret for an existing client is how a leaked one is
                    // replaced: what the options leave out stays as it was (rotating the
                    // only admin's secret must not demote it).
                    let kept = existing.cloned().unwrap_or_default();
                    saved_role = role.unwrap_or_else(|| kept.role());
                    let given = |list: &BTreeMap<String, i64>, old: BTreeMap<String, i64>| {
                        if list.is_empty() {
                            old
                        } else {
                            list.clone()
                        }
                    };
                    Ok(Some(Event::ClientSaved {
                        id: Name::from(client_id.as_str()),
                        client: Box::new(Client {
                            secret_hash: hash.into(),
                            role: Some(saved_role),
                            max_priority: given(&max_priority, kept.max_priority),
                            allowed_queues: kept.allowed_queues,
                            max_reservation_time: given(
                                &max_reservation,
                                kept.max_reservation_time,
                            ),
                            email: email.clone().or(kept.email),
                        }),
                    }))
                })
                .await?;
            writeln!(
                out,
                "{} client {client_id:?} with role {}.\nclient_id: {client_id}\nclient_secret: {secret}\n\
                 The secret is shown only now (flinger keeps its bcrypt hash); use it with \
                 `testflinger-cli login --client-id {client_id} --secret-key ...` (or each \
                 command's --client-id and --secret-key, or TESTFLINGER_CLIENT_ID and \
                 TESTFLINGER_SECRET_KEY) or `flinger client token-file`.",
                if created { "Created" } else { "Gave a new secret to" },
                saved_role.as_str()
            )?;
            if !created {
                let tokens = match revoked {
                    0 => "It had no refresh tokens.".to_owned(),
                    1 => "Its refresh token was revoked".to_owned(),
                    n => format!("Its {n} refresh tokens were revoked"),
                };
                let tokens = if revoked == 0 {
                    tokens
                } else {
                    format!(
                        "{tokens} with it: a token file written for it no longer works; write \
                         a new one with `flinger client token-file {client_id} --out FILE`."
                    )
                };
                writeln!(
                    out,
                    "The old secret no longer works. {tokens} Access tokens issued under \
                     the old secret are refused from their next request on. The role, limits \
                     and email are {}.",
                    if role.is_some()
                        || !max_priority.is_empty()
                        || !max_reservation.is_empty()
                        || email.is_some()
                    {
                        "as the options give them, the rest as they were"
                    } else {
                        "as they were"
                    }
                )?;
            }
        }
        ClientAction::TokenFile {
            client_id,
            out: path,
            valid_days,
        } => {
            if !(1..=3660).contains(valid_days) {
                return Err(Error::InvalidInput("--valid-days must be 1..=3660".into()));
            }
            let refresh = token::new_refresh_token();
            let at = now();
            let expires_at = at + valid_days * 86_400;
            let no_client = || {
                Error::NotFound(format!(
                    "no client {client_id:?}: create it first with `flinger client add`"
                ))
            };
            if store.read(|access| access.client(client_id).is_none()) {
                return Err(no_client());
            }
            // The file is written and synced first, the token recorded next, the file put
            // in place last: a path that cannot be written records nothing, and a token
            // recorded is in a file already (beside `path` until the rename).
            let file = json!({
                "refresh_token": refresh,
                "obtained_at": crate::http::wire::iso_z(at),
            });
            let unwritable = |e: std::io::Error| {
                Error::InvalidInput(format!(
                    "cannot write the token file {}: {e} (no token was issued)",
                    path.display()
                ))
            };
            let staged =
                token::StagedFile::write(path, file.to_string().as_bytes()).map_err(unwritable)?;
            let hash = token::token_hash(&refresh);
            let mut role = Role::Contributor;
            store
                .record_durably(|access| {
                    role = access.client(client_id).ok_or_else(no_client)?.role();
                    Ok(Some(Event::RefreshTokenIssued {
                        hash: hash.clone(),
                        client_id: Name::from(client_id.as_str()),
                        issued_at: at,
                        expires_at,
                    }))
                })
                .await?;
            if let Err(e) = staged.commit() {
                // Nobody may hold a token the file does not: the one just recorded goes.
                store
                    .record_durably(|_| Ok(Some(Event::RefreshTokenRevoked { hash })))
                    .await?;
                return Err(Error::Internal(format!(
                    "cannot put the token file in place at {}: {e} (the token issued for it \
                     was revoked)",
                    path.display()
                )));
            }
            writeln!(
                out,
                "Wrote a refresh token for client {client_id:?} (role {}) to {} (mode 0600), valid until {}.\n\
                 Start the agent with `testflinger-agent --token-file {}`.",
                role.as_str(),
                path.display(),
                crate::http::wire::iso_z(expires_at),
                path.display()
            )?;
        }
        ClientAction::List => {
            let lines = store.read(|a| {
                a.clients
                    .iter()
                    .map(|(id, c)| crate::http::auth::client_json(id, c).to_string())
                    .collect::<Vec<_>>()
            });
            for line in lines {
                writeln!(out, "{line}")?;
            }
        }
        ClientAction::Delete { client_id } => {
            store
                .record_durably(|access| {
                    access
                        .client(client_id)
                        .ok_or_else(|| Error::NotFound(format!("no client {client_id:?}")))?;
                    Ok(Some(Event::ClientDeleted {
                        id: Name::from(client_id.as_str()),
                    }))
                })
                .await?;
            writeln!(out, "Deleted client {client_id:?}.")?;
        }
    }
    Ok(())
}
