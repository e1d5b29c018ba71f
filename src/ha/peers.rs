//! A forwarded request's client address, vouched for between nodes.
//!
//! Every request a standby forwards reaches the leader from the standby's address, so the
//! leader's per-address limits (failed token requests) and its security logs would see
//! one client per standby: one attacker's bad logins through a standby would lock out
//! everyone using it. So the standby tells the leader the address it accepted the
//! request from, in [`CLIENT`], with a proof in [`PROOF`]: an HMAC-SHA256 of the address
//! under the key every node reads from the database they share (`flinger_private`, row
//! `peer-key`; made by the first node to connect). Only a node can make one: the leader
//! believes the address only with a valid proof, and otherwise counts the request under
//! the connection's own peer, as any other. Both headers are removed from every request
//! before the leader's routes see it, and a standby replaces whatever a client sent in
//! them.
//!
//! What it does not do: the proof is not bound to one request, so someone who can read
//! the traffic between nodes (which also carries every token and secret in clear) can
//! replay an address they saw. Deleting the row makes a new key for nodes that connect
//! afterwards; restart every node then.

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{crypto, Algorithm, DecodingKey, EncodingKey};

/// The client's address, as the forwarding node accepted the request from it.
pub(super) const CLIENT: HeaderName = HeaderName::from_static("x-flinger-client-address");

/// The forwarding node's proof that it set [`CLIENT`] (base64url HMAC-SHA256).
pub(super) const PROOF: HeaderName = HeaderName::from_static("x-flinger-client-proof");

/// What the proof signs: the address, apart from anything else the key may sign.
fn message(address: &str) -> Vec<u8> {
    format!("flinger forwarded client\n{address}").into_bytes()
}

/// Sets [`CLIENT`] and [`PROOF`] for `client` in a request about to be forwarded,
/// replacing whatever the client sent in them.
pub(super) fn vouch(key: &[u8], headers: &mut HeaderMap, client: IpAddr) {
    let address = client.to_string();
    let proof = crypto::sign(
        &message(&address),
        &EncodingKey::from_secret(key),
        Algorithm::HS256,
    );
    match (
        HeaderValue::from_str(&address),
        proof.map(HeaderValue::try_from),
    ) {
        (Ok(address), Ok(Ok(proof))) => {
            headers.insert(CLIENT, address);
            headers.insert(PROOF, proof);
        }
        _ => forget(headers),
    }
}

/// The client address a forwarding node vouched for in `headers`, if the proof holds
/// under `key`; the headers are removed either way.
pub(super) fn vouched(key: Option<&[u8]>, headers: &mut HeaderMap) -> Option<IpAddr> {
    let address = headers.remove(CLIENT);
    let proof = headers.remove(PROOF);
    let (key, address, proof) = (key?, address?, proof?);
    let (address, proof) = (address.to_str().ok()?, proof.to_str().ok()?);
    let holds = crypto::verify(
        proof,
        &message(address),
        &DecodingKey::from_secret(key),
        Algorithm::HS256,
    );
    if !holds.unwrap_or(false) {
        return None;
    }
    address.parse().ok()
}

/// Removes both headers (a request no node vouched for).
pub(super) fn forget(headers: &mut HeaderMap) {
    headers.remove(CLIENT);
    headers.remove(PROOF);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_proof_made_with_the_key_for_that_address_holds() {
        let key = b"the nodes' key";
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let mut headers = HeaderMap::new();
        vouch(key, &mut headers, client);
        assert_eq!(vouched(Some(key), &mut headers.clone()), Some(client));
        // The headers go whether or not the proof holds.
        let mut seen = headers.clone();
        vouched(Some(key), &mut seen);
        assert!(!seen.contains_key(CLIENT) && !seen.contains_key(PROOF));
        // Another key, no key, another address under the same proof: not believed.
        assert_eq!(vouched(Some(b"another key"), &mut headers.clone()), None);
        assert_eq!(vouched(None, &mut headers.clone()), None);
        let mut forged = headers.clone();
        forged.insert(CLIENT, HeaderValue::from_static("192.0.2.8"));
        assert_eq!(vouched(Some(key), &mut forged), None);
        let mut bare = HeaderMap::new();
        bare.insert(CLIENT, HeaderValue::from_static("192.0.2.8"));
        assert_eq!(vouched(Some(key), &mut bare), None);
    }
}
