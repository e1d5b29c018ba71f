//! Who may change which client through `PUT /v1/client-permissions/<id>`: the role
//! hierarchy of upstream's `set_client_permissions`, plus one rule upstream lacks.
//!
//! Upstream refuses a caller whose role is below the client's current role or below the
//! role it assigns, so a manager may edit another manager, secret included. Setting a
//! client's secret is taking its identity over: a manager that replaces a fellow manager's
//! secret can log in as that manager, and its acts are then recorded under the other's
//! name. So replacing another client's secret, or changing its role (demoting a peer to
//! contributor would otherwise make its secret replaceable in a second request), needs a
//! role strictly above that client's. Admins are exempt: nothing is above them, and they
//! may delete and recreate any client anyway. A client may always change its own secret.
//! Other fields (priorities, reservation times, email) follow upstream's rule alone.
//!
//! Pure: the caller is resolved by `crate::access`, the client read from the access
//! partition by the handler, which records the change only when this allows it.

use crate::error::{Error, Result};
use crate::model::access::Role;

/// One requested change of a client, as far as the rule needs it.
#[derive(Clone, Copy, Debug)]
pub struct ClientEdit<'a> {
    /// The caller's client id (`None` with access control off).
    pub caller: Option<&'a str>,
    /// The caller's role (admin with access control off).
    pub caller_role: Role,
    /// The client changed.
    pub target: &'a str,
    /// Its current role, `None` when the request creates it.
    pub current_role: Option<Role>,
    /// The role the request assigns, if any.
    pub new_role: Option<Role>,
    /// Whether the request sets `client_secret`.
    pub new_secret: bool,
}

/// Whether the edit is allowed: `Ok`, or 403 naming what the caller may not do.
pub fn check_client_edit(edit: ClientEdit<'_>) -> Result<()> {
    let who = edit.caller.unwrap_or("open");
    let target = edit.target;
    let mine = edit.caller_role;
    if let Some(current) = edit.current_role {
        if mine < current {
            return Err(Error::Forbidden(format!(
                "{who} has insufficient permissions to modify client '{target}'"
            )));
        }
    }
    if let Some(new) = edit.new_role.filter(|r| mine < *r) {
        return Err(Error::Forbidden(format!(
            "{who} has insufficient permissions to assign role '{}' to client '{target}'",
            new.as_str()
        )));
    }
    let myself = edit.caller == Some(target);
    let peer = edit
        .current_role
        .is_some_and(|current| mine == current && mine != Role::Admin);
    if peer && !myself {
        let change = match (edit.new_secret, edit.new_role) {
            (true, _) => Some("replace the secret of"),
            (false, Some(new)) if Some(new) != edit.current_role => Some("change the role of"),
            _ => None,
        };
        if let Some(change) = change {
            return Err(Error::Forbidden(format!(
                "{who} has insufficient permissions to {change} client '{target}': it needs a \
                 role above '{}'",
                mine.as_str()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(
        caller_role: Role,
        current_role: Option<Role>,
        new_role: Option<Role>,
        new_secret: bool,
    ) -> ClientEdit<'static> {
        ClientEdit {
            caller: Some("me"),
            caller_role,
            target: "them",
            current_role,
            new_role,
            new_secret,
        }
    }

    fn allowed(edit: ClientEdit<'_>) -> bool {
        match check_client_edit(edit) {
            Ok(()) => true,
            Err(e) => {
                assert_eq!(e.status(), 403, "{e}");
                false
            }
        }
    }

    use Role::{Admin, Agent, Contributor, Manager};

    #[test]
    fn a_role_below_the_client_or_the_role_assigned_is_refused_as_upstream() {
        assert!(!allowed(edit(Manager, Some(Admin), None, false)));
        assert!(!allowed(edit(
            Manager,
            Some(Contributor),
            Some(Admin),
            false
        )));
        assert!(!allowed(edit(Manager, None, Some(Admin), true)));
        assert!(allowed(edit(Manager, None, Some(Manager), true)));
        assert!(allowed(edit(
            Manager,
            Some(Contributor),
            Some(Manager),
            true
        )));
    }

    #[test]
    fn a_peers_secret_and_role_need_a_higher_role_but_its_other_fields_do_not() {
        assert!(!allowed(edit(Manager, Some(Manager), None, true)));
        assert!(!allowed(edit(
            Manager,
            Some(Manager),
            Some(Contributor),
            false
        )));
        assert!(!allowed(edit(Manager, Some(Manager), Some(Agent), false)));
        // Naming its current role changes nothing.
        assert!(allowed(edit(Manager, Some(Manager), Some(Manager), false)));
        assert!(allowed(edit(Manager, Some(Manager), None, false)));
        // Below the caller: anything the caller may grant.
        assert!(allowed(edit(Manager, Some(Contributor), None, true)));
        assert!(allowed(edit(Manager, Some(Agent), Some(Contributor), true)));
        // Admins are exempt (nothing is above them; they may delete any client anyway).
        assert!(allowed(edit(Admin, Some(Admin), Some(Manager), true)));
    }

    #[test]
    fn a_client_may_replace_its_own_secret() {
        let own = ClientEdit {
            target: "me",
            ..edit(Manager, Some(Manager), None, true)
        };
        assert!(allowed(own));
        let demote_self = ClientEdit {
            new_role: Some(Contributor),
            ..own
        };
        assert!(allowed(demote_self));
        let promote_self = ClientEdit {
            new_role: Some(Admin),
            ..own
        };
        assert!(!allowed(promote_self));
    }
}
