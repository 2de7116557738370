//! This account's own devices: its signed device list as the server serves
//! it, checked against our account key before anything is shown.

use missive_crypto::{ListChange, SignedDeviceList};
use missive_proto::v1::{self, key_service_client::KeyServiceClient};

use crate::error::{ClientError, Result};

use super::{Client, META_DEVICE_LIST};

/// One device of this account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnDevice {
    /// Device id.
    pub id: u32,
    /// A name for people ("primary" for the device holding the account key).
    pub name: String,
    /// Whether it is the device running this command.
    pub current: bool,
    /// Fingerprint of its device key, hex.
    pub fingerprint: String,
    /// The day it joined (`YYYY-MM-DD`, UTC), as the server recorded it (not
    /// signed: informative); `None` when the server did not say.
    pub linked_on: Option<String>,
    /// The last day it logged in or opened its message stream (`YYYY-MM-DD`,
    /// UTC), as the server recorded it (informative); `None` when the
    /// server has no record.
    pub last_seen: Option<String>,
}

impl Client {
    /// The recovery code of the account key, on the device that holds it
    /// (`missive register` prints it once).
    pub fn recovery_code(&self) -> Option<zeroize::Zeroizing<String>> {
        self.account_key
            .as_ref()
            .map(|k| missive_crypto::recovery::RecoveryCode::of(k).to_text())
    }

    /// Whether this device holds the account key (the primary).
    pub fn holds_account_key(&self) -> bool {
        self.account_key.is_some()
    }

    /// The account's devices, from the newest list the server serves that
    /// verifies under our account key and is not older than the newest we saw.
    pub async fn devices(&mut self) -> Result<Vec<OwnDevice>> {
        let (list, days) = self.fetch_own(true).await?;
        Ok(list
            .unverified_list()
            .devices
            .iter()
            .map(|d| OwnDevice {
                id: d.device_id,
                name: if d.device_id == super::FIRST_DEVICE {
                    "primary".to_owned()
                } else {
                    format!("device {}", d.device_id)
                },
                current: d.device_id == self.device_id,
                fingerprint: d.identity.fingerprint().to_string(),
                linked_on: days
                    .iter()
                    .find(|day| day.device_id == d.device_id)
                    .map(|day| utc_day(day.linked_at_ms)),
                last_seen: days
                    .iter()
                    .find(|day| day.device_id == d.device_id && day.last_seen_at_ms > 0)
                    .map(|day| utc_day(day.last_seen_at_ms)),
            })
            .collect())
    }

    /// Our own list as served: it must verify under our account key and not
    /// go back from the newest we kept; kept if newer.
    pub(super) fn accept_own_list(&mut self, bytes: &[u8]) -> Result<SignedDeviceList> {
        let refused = |reason: String| ClientError::DeviceListRefused {
            username: self.username.clone(),
            reason,
        };
        if bytes.is_empty() {
            return Err(refused("the server sent none".into()));
        }
        let list = SignedDeviceList::from_bytes(bytes).map_err(|e| refused(e.to_string()))?;
        let seen = self.own_device_list()?;
        let (_, change) = list
            .verify_change(
                &self.account,
                &self.username,
                seen.as_ref().map(|l| (l.version(), l.list_hash())),
            )
            .map_err(|e| refused(e.to_string()))?;
        if change == ListChange::Newer {
            self.store
                .write(|db| db.set_meta(META_DEVICE_LIST, &list.to_bytes()))?;
        }
        Ok(list)
    }

    /// Our own list from the server, verified and kept if newer.
    pub(super) async fn fetch_own_device_list(&mut self) -> Result<SignedDeviceList> {
        Ok(self.fetch_own(false).await?.0)
    }

    /// [`Self::fetch_own_device_list`], with the server's record of the days
    /// each device joined and was last seen when `linked_days`.
    async fn fetch_own(
        &mut self,
        linked_days: bool,
    ) -> Result<(SignedDeviceList, Vec<v1::DeviceLinkedDay>)> {
        let mut retried = false;
        let (list, days) = loop {
            let kept = self.own_device_list()?.map(|l| l.version());
            let channel = self.channel().await?;
            let req = self
                .authed(
                    v1::GetDeviceListRequest {
                        username: self.username.clone(),
                        with_linked_days: linked_days,
                    },
                    true,
                )
                .await?;
            let resp = match KeyServiceClient::new(channel).get_device_list(req).await {
                Ok(r) => r.into_inner(),
                Err(s) => return Err(self.authed_err(&s)),
            };
            let days = resp.linked_days;
            match self
                .accept_own_list(&resp.signed_device_list)
                .map(|l| (l, days))
            {
                // Another process on this home kept a newer list while the
                // answer was on its way: ask again once. A server that
                // really rolls the list back answers the old one again.
                Err(ClientError::DeviceListRefused { .. })
                    if !retried && self.own_device_list()?.map(|l| l.version()) != kept =>
                {
                    retried = true;
                }
                other => break other?,
            }
        };
        if !list
            .unverified_list()
            .devices
            .iter()
            .any(|d| d.device_id == self.device_id && &d.identity == self.identity.public())
        {
            return Err(ClientError::DeviceListRefused {
                username: self.username.clone(),
                reason: format!(
                    "it does not name this device ({}); it was removed from the account",
                    self.device_id
                ),
            });
        }
        Ok((list, days))
    }
}

/// `YYYY-MM-DD` of a time in ms (UTC).
fn utc_day(ms: u64) -> String {
    super::rfc3339(ms).chars().take(10).collect()
}
