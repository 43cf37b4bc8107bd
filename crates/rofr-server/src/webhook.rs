//! Webhooks to providers: a delivery is queued in the same transaction as the event it
//! announces (an offer, a match offer, a request for quotes, an award), then posted
//! with an HMAC-SHA256 signature and retried with exponential backoff until the
//! receiver answers 2xx or the attempts run out. Delivery state is kept for the buyer.
//!
//! Signature: `Rofr-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>` with
//! `Rofr-Timestamp: <Unix seconds>`. Signing the timestamp lets receivers refuse replays
//! older than a tolerance they choose (see [`verify`]).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use rofr_store::Location;
use sha2::Sha256;

/// Attempts before a delivery is given up as failed.
pub const MAX_ATTEMPTS: u32 = 8;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Rofr-Signature` header value for a body sent at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "v1={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the Rofr-Timestamp header is not Unix seconds")]
    BadTimestamp,
    #[error(
        "the delivery is {0} s away from now, beyond the tolerance: a replay or a skewed clock"
    )]
    Stale(i64),
    #[error("the Rofr-Signature header is not `v1=<hex>`")]
    BadSignatureFormat,
    #[error("the signature does not match the body")]
    Mismatch,
}

/// Checks a delivery as a receiver should: the timestamp within `tolerance` seconds of
/// `now`, and the signature (compared in constant time) over timestamp and body.
pub fn verify(
    secret: &str,
    timestamp: &str,
    body: &[u8],
    signature: &str,
    now: i64,
    tolerance: i64,
) -> Result<(), VerifyError> {
    let timestamp: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    let skew = (now - timestamp).abs();
    if skew > tolerance {
        return Err(VerifyError::Stale(skew));
    }
    let hex_part = signature
        .trim()
        .strip_prefix("v1=")
        .ok_or(VerifyError::BadSignatureFormat)?;
    let expected = hex::decode(hex_part).map_err(|_| VerifyError::BadSignatureFormat)?;
    mac(secret, timestamp, body)
        .verify_slice(&expected)
        .map_err(|_| VerifyError::Mismatch)
}

/// A fresh webhook secret.
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("whsec_{}", hex::encode(bytes))
}

pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

/// The wait before attempt `attempts + 1`: one second, doubling, at most five minutes.
pub fn backoff(attempts: u32) -> Duration {
    Duration::from_secs((1u64 << attempts.min(16)).min(300))
}

/// Whether an address is one a webhook may not reach unless the operator allows it:
/// this machine, its link (where cloud metadata services answer) or a private network.
pub fn private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                // Shared address space (RFC 6598), used inside clouds and carriers.
                || a == 100 && (64..128).contains(&b)
                || a == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return private(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // Unique local (fc00::/7) and link-local (fe80::/10).
                || first & 0xfe00 == 0xfc00
                || first & 0xffc0 == 0xfe80
        }
    }
}

/// The longest webhook URL, in characters.
pub const MAX_URL_CHARS: usize = 2048;

/// Checks a webhook URL as a provider sends it: http or https, no credentials in it,
/// and (unless `allow_private`) not at a loopback, link-local or private address. The
/// message never repeats the URL, which may hold a secret.
pub fn check_url(text: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("a webhook URL starts with http:// or https://".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "a webhook URL may not carry credentials (user:password@); deliveries are signed with the secret this call returns".into(),
        );
    }
    if text.chars().count() > MAX_URL_CHARS {
        return Err(format!(
            "a webhook URL is at most {MAX_URL_CHARS} characters"
        ));
    }
    if allow_private {
        return Ok(url);
    }
    let local = match url.host() {
        Some(url::Host::Ipv4(v4)) => private(IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => private(IpAddr::V6(v6)),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        None => true,
    };
    if local {
        return Err("a webhook URL may not point at a loopback, link-local or private address (the operator can allow them with `rofr serve --allow-private-webhooks`)".into());
    }
    Ok(url)
}

/// Resolves a receiver's name and keeps only public addresses, so that a name that
/// resolves to a private address later does not reach inside the broker's network.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|address| !private(address.ip()))
                .collect();
            if found.is_empty() {
                return Err(format!("`{host}` has no public address").into());
            }
            let addresses: reqwest::dns::Addrs = Box::new(found.into_iter());
            Ok(addresses)
        })
    }
}

/// The client deliveries are posted with: no redirects (a receiver could send them
/// anywhere), and unless `allow_private`, public addresses only and no proxy (which
/// would resolve names itself).
fn client(allow_private: bool) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none());
    let builder = if allow_private {
        builder
    } else {
        builder.no_proxy().dns_resolver(PublicOnly)
    };
    builder.build().expect("the HTTP client builds")
}

/// Posts due deliveries until `stop` turns true.
pub async fn deliver(
    database: Location,
    allow_private: bool,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut store = match database.open() {
        Ok(store) => store,
        Err(error) => {
            tracing::error!(%error, "webhook deliveries cannot start");
            return;
        }
    };
    let http = client(allow_private);
    loop {
        if *stop.borrow() {
            return;
        }
        // Claimed for a minute: ten attempts of at most five seconds each fit, and a
        // replica that stops meanwhile leaves them to another after it.
        let due = store
            .claim_deliveries(unix_ms(), 60_000, 10)
            .unwrap_or_else(|error| {
                tracing::error!(%error, "reading webhook deliveries failed");
                Vec::new()
            });
        for delivery in &due {
            let outcome = match (&delivery.url, &delivery.secret) {
                (Some(url), Some(secret)) => {
                    let timestamp = unix_ms() / 1000;
                    let signature = sign(secret, timestamp, delivery.body.as_bytes());
                    let sent = http
                        .post(url)
                        .header("content-type", "application/json")
                        .header("rofr-timestamp", timestamp.to_string())
                        .header("rofr-signature", signature)
                        .header("rofr-delivery", delivery.id.to_string())
                        .body(delivery.body.clone())
                        .send()
                        .await;
                    match sent {
                        Ok(response) if response.status().is_success() => Ok(()),
                        Ok(response) => Err(format!("receiver answered {}", response.status())),
                        Err(error) => Err(format!("cannot reach the receiver: {error}")),
                    }
                }
                _ => Err("the provider has no webhook registered".to_owned()),
            };
            let recorded = match outcome {
                Ok(()) => store.record_attempt(delivery.id, "delivered", unix_ms(), None),
                Err(error) => {
                    let attempts = delivery.attempts + 1;
                    let (status, next) = if attempts >= MAX_ATTEMPTS {
                        ("failed", unix_ms())
                    } else {
                        (
                            "pending",
                            unix_ms() + backoff(attempts - 1).as_millis() as i64,
                        )
                    };
                    tracing::debug!(delivery = delivery.id, provider = %delivery.provider, %error, attempts, "webhook delivery failed");
                    store.record_attempt(delivery.id, status, next, Some(&error))
                }
            };
            if let Err(error) = recorded {
                tracing::error!(%error, "recording a webhook attempt failed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_told_from_public_ones() {
        for address in [
            "127.0.0.1",
            "10.0.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(private(address.parse().unwrap()), "{address}");
        }
        for address in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(!private(address.parse().unwrap()), "{address}");
        }
    }

    #[test]
    fn a_refused_url_is_never_repeated() {
        let refused = check_url("https://u:s3cret@example.com/x", true).unwrap_err();
        assert!(!refused.contains("s3cret"), "{refused}");
        let refused = check_url("https://[fe80::1%25eth0]/", false);
        assert!(refused.is_err());
        assert!(check_url("https://example.com/x", false).is_ok());
    }

    #[test]
    fn a_signature_verifies_and_any_change_breaks_it() {
        let signature = sign("whsec_1", 1_700_000_000, b"{\"a\":1}");
        assert_eq!(
            verify(
                "whsec_1",
                "1700000000",
                b"{\"a\":1}",
                &signature,
                1_700_000_010,
                300
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                "whsec_1",
                "1700000000",
                b"{\"a\":2}",
                &signature,
                1_700_000_010,
                300
            ),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(
                "whsec_2",
                "1700000000",
                b"{\"a\":1}",
                &signature,
                1_700_000_010,
                300
            ),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(
                "whsec_1",
                "1700000001",
                b"{\"a\":1}",
                &signature,
                1_700_000_010,
                300
            ),
            Err(VerifyError::Mismatch),
            "the timestamp is signed too"
        );
    }

    #[test]
    fn an_old_delivery_is_refused_as_a_replay() {
        let signature = sign("s", 1_000, b"x");
        assert_eq!(
            verify("s", "1000", b"x", &signature, 2_000, 300),
            Err(VerifyError::Stale(1_000))
        );
    }

    #[test]
    fn the_signature_matches_the_rfc_4231_hmac_sha256_vector() {
        // RFC 4231 test case 2, on the MAC primitive that `sign` uses.
        let mut mac = HmacSha256::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(20), Duration::from_secs(300));
    }
}
