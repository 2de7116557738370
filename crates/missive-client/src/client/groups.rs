//! Group conversations, the network half (docs/PROTOCOL.md, "Groups"):
//! KeyPackages on the server, creating a group, adding and removing
//! members, leaving, sending, and processing what the Delivery Service
//! orders. The MLS half, inside store transactions, is `group_state.rs`.
//!
//! Every change a device makes is a commit the server orders: the first
//! commit for an epoch wins, and a device whose commit lost processes the
//! winner and makes its commit again. A commit waits in the group's record
//! until the server answers, so a crash or a second process on this home
//! resends it (the server's answer is idempotent) instead of forking.

use missive_crypto::franking::{self, FrankingKey};
use missive_proto::v1::{self, group_service_client::GroupServiceClient};
use prost::Message as _;
use rand::RngCore as _;
use rand::rngs::OsRng;
use tonic::Code;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use crate::error::{ClientError, Result};
use crate::limits::SEND_ATTEMPTS;
use crate::store::{
    Db, GroupRecord, GroupRef, GroupStatus, HistoryEntry, SealedMessage, group_conversation, now_ms,
};

use super::group_state::{self, DeviceName, GroupRefusal, Me, Processed};
use super::{Client, RecvEvent, Sent, normalize_username};

/// The own device list version whose devices every group holds (meta).
const META_GROUPS_SYNCED: &str = "groups_synced_list_version";

/// KeyPackages kept on the server per device: refilled below the low mark.
const KEY_PACKAGE_TARGET: usize = 20;
const KEY_PACKAGE_LOW: u32 = 5;
/// How often the last-resort KeyPackage is replaced (openmls makes them
/// valid for 84 days; a KeyPackage past its lifetime cannot be added).
const LAST_RESORT_ROTATE_MS: u64 = 28 * 24 * 3600 * 1000;
/// The last-resort KeyPackages made ([`group_state::LastResortKeys`], JSON).
const META_LAST_RESORT: &str = "last_resort_key_packages";

/// A group as `missive group list` shows it.
#[derive(Clone, Debug)]
pub struct GroupSummary {
    /// Its name on this device.
    pub name: String,
    /// The MLS group id, hex.
    pub id: String,
    /// Member accounts (ours included), sorted.
    pub members: Vec<String>,
    /// "active", "left", "removed", or why this device stopped following it.
    pub status: String,
}

/// A member account of a group, as `missive group info` shows it.
#[derive(Clone, Debug)]
pub struct GroupMember {
    /// Username.
    pub username: String,
    /// Its devices in the group.
    pub devices: Vec<u32>,
    /// Safety-number state of the account ("you" for ours).
    pub verification: String,
}

/// What a commit or Welcome the user did not make changed, as events.
fn describe_commit(
    me: &str,
    before: &[String],
    by: Option<&DeviceName>,
    added: &[DeviceName],
    removed: &[DeviceName],
) -> Vec<String> {
    let who = |u: &str| {
        if u == me {
            "you".to_owned()
        } else {
            u.to_owned()
        }
    };
    let by = by.map_or_else(|| "a member".to_owned(), |d| who(&d.username));
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for d in added {
        if seen.contains(&d.username) {
            continue;
        }
        seen.push(d.username.clone());
        if before.contains(&d.username) {
            out.push(format!("{}'s new device joined", who(&d.username)));
        } else {
            out.push(format!("{by} added {}", who(&d.username)));
        }
    }
    let mut seen = Vec::new();
    for d in removed {
        if seen.contains(&d.username) {
            continue;
        }
        seen.push(d.username.clone());
        if by == who(&d.username) {
            out.push(format!("{by} left"));
        } else {
            out.push(format!("{by} removed {}", who(&d.username)));
        }
    }
    out
}

/// The accounts among a group's leaves, sorted, once each.
fn accounts(members: &[(openmls::prelude::LeafNodeIndex, Option<DeviceName>)]) -> Vec<String> {
    let mut out: Vec<String> = members
        .iter()
        .filter_map(|(_, d)| d.as_ref().map(|d| d.username.clone()))
        .collect();
    out.sort();
    out.dedup();
    out
}

fn status_text(status: &GroupStatus) -> String {
    match status {
        GroupStatus::Active => "active".into(),
        GroupStatus::Left => "left".into(),
        GroupStatus::Removed => "removed".into(),
        GroupStatus::Stopped(why) => format!("stopped: {why}"),
    }
}

fn check_group_name(name: &str) -> Result<()> {
    let ok = !name.trim().is_empty()
        && name.len() <= group_state::MAX_GROUP_NAME
        && !name.chars().any(char::is_control)
        && !name.starts_with('#');
    if ok {
        Ok(())
    } else {
        Err(ClientError::Group(format!(
            "a group name is 1 to {} bytes of printable text, not starting with '#': {name:?} is not",
            group_state::MAX_GROUP_NAME
        )))
    }
}

/// A name for a joined group no other group of this device has.
fn unique_name(db: &Db<'_>, wanted: &str, id_hex: &str) -> Result<String> {
    let taken: Vec<String> = db
        .groups()?
        .into_iter()
        .filter(|g| g.id != id_hex)
        .map(|g| g.name)
        .collect();
    let base = if check_group_name(wanted).is_ok() {
        wanted.to_owned()
    } else {
        "group".to_owned()
    };
    if !taken.contains(&base) {
        return Ok(base);
    }
    Ok((2..)
        .map(|n| format!("{base} ({n})"))
        .find(|n| !taken.contains(n))
        .unwrap_or(base))
}

fn refusal(e: GroupRefusal) -> ClientError {
    match e {
        GroupRefusal::Refused(why) => ClientError::Group(why),
        GroupRefusal::Local(e) => e,
    }
}

fn epoch_of(s: &tonic::Status) -> Option<u64> {
    if s.code() != Code::FailedPrecondition {
        return None;
    }
    v1::GroupEpoch::decode(s.details())
        .ok()
        .map(|e| e.current_epoch)
}

impl Client {
    async fn groups_client(&mut self) -> Result<GroupServiceClient<Channel>> {
        let channel = self.channel().await?;
        Ok(GroupServiceClient::new(channel)
            .max_decoding_message_size(crate::limits::MAX_GROUP_MESSAGE_BYTES)
            .max_encoding_message_size(crate::limits::MAX_GROUP_MESSAGE_BYTES))
    }

    /// Keeps KeyPackages for this device on the server (and its last-resort
    /// one), so others can add it to groups while it is offline.
    pub async fn maintain_key_packages(&mut self) -> Result<()> {
        let req = self.authed(v1::GetKeyPackageCountRequest {}, true).await?;
        let count = match self.groups_client().await?.get_key_package_count(req).await {
            Ok(r) => r.into_inner(),
            Err(s) => return Err(self.authed_err(&s)),
        };
        let mut kept: group_state::LastResortKeys = match self.store.get_meta(META_LAST_RESORT)? {
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            None => Default::default(),
        };
        let now = now_ms();
        let rotate = match kept.0.last() {
            Some((made, _)) => now.saturating_sub(*made) >= LAST_RESORT_ROTATE_MS,
            // Made before rotation was kept track of: from now on.
            None if count.has_last_resort => {
                kept.0.push((now, None));
                self.store.set_meta(
                    META_LAST_RESORT,
                    &serde_json::to_vec(&kept).unwrap_or_default(),
                )?;
                false
            }
            None => true,
        };
        let need_last_resort = !count.has_last_resort || rotate;
        if count.one_time >= KEY_PACKAGE_LOW && !need_last_resort {
            return Ok(());
        }
        let fill = KEY_PACKAGE_TARGET.saturating_sub(count.one_time as usize);
        let me_name = self.username.clone();
        let device_id = self.device_id;
        let identity = &self.identity;
        let (key_packages, last_resort) = self.store.write(|db| {
            let me = Me {
                username: &me_name,
                device_id,
                identity,
            };
            let kps =
                group_state::new_key_packages(db, &me, fill, false).map_err(ClientError::Group)?;
            let last = if need_last_resort {
                let last = group_state::rotate_last_resort(db, &me, &mut kept, now)
                    .map_err(ClientError::Group)?;
                let json =
                    serde_json::to_vec(&kept).map_err(|e| ClientError::Group(e.to_string()))?;
                db.set_meta(META_LAST_RESORT, &json)?;
                last
            } else {
                Vec::new()
            };
            Ok((kps, last))
        })?;
        let req = self
            .authed(
                v1::UploadKeyPackagesRequest {
                    key_packages,
                    last_resort,
                },
                true,
            )
            .await?;
        if let Err(s) = self.groups_client().await?.upload_key_packages(req).await {
            return Err(self.authed_err(&s));
        }
        Ok(())
    }

    /// The KeyPackages of every device of `username` (our own other devices
    /// when it is us), each checked against the account's signed device list.
    async fn key_packages_of(
        &mut self,
        username: &str,
    ) -> Result<Vec<(DeviceName, openmls::prelude::KeyPackage)>> {
        let req = self
            .authed(
                v1::FetchKeyPackagesRequest {
                    username: username.to_owned(),
                },
                true,
            )
            .await?;
        let resp = match self.groups_client().await?.fetch_key_packages(req).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::NotFound => {
                return Err(ClientError::UnknownUser(username.to_owned()));
            }
            Err(s) => return Err(self.authed_err(&s)),
        };
        let (list, _) = self.verified_device_list(username, &resp.signed_device_list)?;
        let mut out = Vec::new();
        for kp in &resp.key_packages {
            if username == self.username && kp.device_id == self.device_id {
                continue;
            }
            let Some(entry) = list
                .unverified_list()
                .devices
                .iter()
                .find(|d| d.device_id == kp.device_id)
            else {
                return Err(ClientError::DeviceNotListed {
                    username: username.to_owned(),
                    device: kp.device_id,
                });
            };
            let device = DeviceName {
                username: username.to_owned(),
                device_id: kp.device_id,
            };
            let checked = group_state::check_key_package(&kp.key_package, &device, &entry.identity)
                .map_err(ClientError::Group)?;
            out.push((device, checked));
        }
        for missing in &resp.missing_devices {
            if !(username == self.username && *missing == self.device_id) {
                self.notices.push(format!(
                    "device {missing} of {username} has no KeyPackage on the server and was not added"
                ));
            }
        }
        Ok(out)
    }

    fn group_named(&self, name: &str) -> Result<GroupRecord> {
        self.store
            .db()
            .groups()?
            .into_iter()
            .find(|g| g.name == name)
            .ok_or_else(|| ClientError::Group(format!("you are in no group named {name:?}")))
    }

    fn active_group_named(&self, name: &str) -> Result<GroupRecord> {
        let rec = self.group_named(name)?;
        match &rec.status {
            GroupStatus::Active => Ok(rec),
            other => Err(ClientError::Group(format!(
                "the group {name:?} is {}: this device no longer takes part in it",
                status_text(other)
            ))),
        }
    }

    /// Creates a group named `name` with `members` (usernames) and this
    /// account's other devices.
    pub async fn create_group(&mut self, name: &str, members: &[String]) -> Result<GroupSummary> {
        check_group_name(name)?;
        if self.store.db().groups()?.iter().any(|g| g.name == name) {
            return Err(ClientError::Group(format!(
                "you already have a group named {name:?}"
            )));
        }
        let mut accounts = Vec::new();
        for m in members {
            let m = normalize_username(m)?;
            if m == self.username {
                return Err(ClientError::Group(
                    "you are in every group you create: name the others".into(),
                ));
            }
            if !accounts.contains(&m) {
                accounts.push(m);
            }
        }
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        let req = self
            .authed(
                v1::CreateGroupRequest {
                    group_id: id.to_vec(),
                },
                true,
            )
            .await?;
        if let Err(s) = self.groups_client().await?.create_group(req).await {
            return Err(self.authed_err(&s));
        }
        let me_name = self.username.clone();
        let device_id = self.device_id;
        let identity = &self.identity;
        self.store.write(|db| {
            let me = Me {
                username: &me_name,
                device_id,
                identity,
            };
            group_state::create(db, &me, &id, name).map_err(ClientError::Group)?;
            db.put_group(&GroupRecord {
                id: hex::encode(id),
                name: name.to_owned(),
                joined_ms: now_ms(),
                status: GroupStatus::Active,
                pending_commit: None,
                last_seq: 0,
            })?;
            group_event(
                db,
                &id,
                &me_name,
                &format!("you created the group {name}"),
                true,
            )
        })?;
        let only_us = accounts.is_empty();
        let mut adds = vec![self.username.clone()];
        adds.extend(accounts);
        match self.commit_change(&id, &adds, &[]).await {
            Ok(()) => {}
            // A group of this device alone, for now.
            Err(ClientError::Group(why)) if only_us && why.starts_with("no device of") => {}
            Err(e) => return Err(e),
        }
        self.group_summary(&id)
    }

    /// Adds `member`'s devices to the group `name`.
    pub async fn group_add(&mut self, name: &str, member: &str) -> Result<()> {
        let rec = self.active_group_named(name)?;
        let member = normalize_username(member)?;
        let id = hex::decode(&rec.id).map_err(|e| ClientError::Group(e.to_string()))?;
        let present = self.group_members_of(&id)?;
        if present
            .iter()
            .any(|(_, d)| d.as_ref().is_some_and(|d| d.username == member))
        {
            return Err(ClientError::Group(format!("{member} is already in {name}")));
        }
        self.commit_change(&id, &[member], &[]).await
    }

    /// Removes every device of `member` from the group `name`.
    pub async fn group_remove(&mut self, name: &str, member: &str) -> Result<()> {
        let rec = self.active_group_named(name)?;
        let member = normalize_username(member)?;
        if member == self.username {
            return Err(ClientError::Group(format!(
                "to leave {name}, use `missive group leave`"
            )));
        }
        let id = hex::decode(&rec.id).map_err(|e| ClientError::Group(e.to_string()))?;
        let devices: Vec<DeviceName> = self
            .group_members_of(&id)?
            .into_iter()
            .filter_map(|(_, d)| d.filter(|d| d.username == member))
            .collect();
        if devices.is_empty() {
            return Err(ClientError::Group(format!("{member} is not in {name}")));
        }
        self.commit_change(&id, &[], &devices).await
    }

    /// Leaves the group `name`: the server stops delivering it to this
    /// device, and the next commit of a remaining member removes its leaf.
    pub async fn group_leave(&mut self, name: &str) -> Result<()> {
        let rec = self.active_group_named(name)?;
        let id = hex::decode(&rec.id).map_err(|e| ClientError::Group(e.to_string()))?;
        // The proposal must be for the group's current epoch, or no member
        // can commit it: process what is pending first.
        self.settle_pending_commit(&id).await?;
        self.catch_up().await?;
        let rec = self.active_group_named(name)?;
        let id = hex::decode(&rec.id).map_err(|e| ClientError::Group(e.to_string()))?;
        let me_name = self.username.clone();
        let device_id = self.device_id;
        let identity = &self.identity;
        let (epoch, proposal) = self.store.write(|db| {
            let me = Me {
                username: &me_name,
                device_id,
                identity,
            };
            group_state::leave(db, &me, &id).map_err(refusal)
        })?;
        let mut message_id = [0u8; 16];
        OsRng.fill_bytes(&mut message_id);
        let req = self
            .authed(
                v1::LeaveGroupRequest {
                    group_id: id.clone(),
                    epoch,
                    message_id: message_id.to_vec(),
                    proposal,
                },
                true,
            )
            .await?;
        if let Err(s) = self.groups_client().await?.leave_group(req).await {
            return Err(self.authed_err(&s));
        }
        self.store.write(|db| {
            let mut rec = db
                .group(&id)?
                .ok_or_else(|| ClientError::Group("the group is gone".into()))?;
            rec.status = GroupStatus::Left;
            rec.pending_commit = None;
            db.put_group(&rec)?;
            group_state::forget(db, &id).map_err(refusal)?;
            group_event(db, &id, &me_name, "you left the group", true)
        })
    }

    fn group_members_of(
        &self,
        id: &[u8],
    ) -> Result<Vec<(openmls::prelude::LeafNodeIndex, Option<DeviceName>)>> {
        let db = self.store.db();
        group_state::read(&db, id, group_state::members).map_err(refusal)
    }

    fn group_summary(&self, id: &[u8]) -> Result<GroupSummary> {
        let rec = self
            .store
            .db()
            .group(id)?
            .ok_or_else(|| ClientError::Group("no such group".into()))?;
        let members = if rec.status == GroupStatus::Active {
            accounts(&self.group_members_of(id)?)
        } else {
            Vec::new()
        };
        Ok(GroupSummary {
            name: rec.name,
            id: rec.id,
            members,
            status: status_text(&rec.status),
        })
    }

    /// Every group this device is or was in.
    pub fn group_list(&self) -> Result<Vec<GroupSummary>> {
        let mut out = Vec::new();
        for rec in self.store.db().groups()? {
            let id = hex::decode(&rec.id).map_err(|e| ClientError::Group(e.to_string()))?;
            out.push(self.group_summary(&id)?);
        }
        Ok(out)
    }

    /// The members of the group `name`: their devices and verification.
    pub fn group_info(&self, name: &str) -> Result<(GroupSummary, Vec<GroupMember>)> {
        let rec = self.group_named(name)?;
        let id = hex::decode(&rec.id).map_err(|e| ClientError::Group(e.to_string()))?;
        let summary = self.group_summary(&id)?;
        let mut members: Vec<GroupMember> = Vec::new();
        if rec.status == GroupStatus::Active {
            for (_, d) in self.group_members_of(&id)? {
                let Some(d) = d else { continue };
                if let Some(m) = members.iter_mut().find(|m| m.username == d.username) {
                    m.devices.push(d.device_id);
                    continue;
                }
                let verification = if d.username == self.username {
                    "you".to_owned()
                } else {
                    self.verification(&d.username)?
                        .map_or_else(|| "unknown".to_owned(), |v| v.to_string())
                };
                members.push(GroupMember {
                    username: d.username,
                    devices: vec![d.device_id],
                    verification,
                });
            }
        }
        members.sort_by(|a, b| a.username.cmp(&b.username));
        for m in &mut members {
            m.devices.sort_unstable();
        }
        Ok((summary, members))
    }

    /// The conversation of the group `name`, oldest first.
    pub fn group_history(&self, name: &str) -> Result<Vec<HistoryEntry>> {
        let rec = self.group_named(name)?;
        let id = hex::decode(&rec.id).map_err(|e| ClientError::Group(e.to_string()))?;
        self.store.history(&group_conversation(&id))
    }

    /// Resends a commit this device made whose answer it never saw.
    async fn settle_pending_commit(&mut self, id: &[u8]) -> Result<()> {
        let Some(pending) = self.store.db().group(id)?.and_then(|g| g.pending_commit) else {
            return Ok(());
        };
        if pending.accepted_seq.is_some() {
            return self.catch_up().await;
        }
        match self.send_commit(id, &pending).await {
            Ok(()) => Ok(()),
            Err(CommitLost::Epoch) => self
                .store
                .write(|db| discard_pending(db, id, &pending.message_id)),
            Err(CommitLost::Other(e)) => Err(e),
        }
    }

    /// Sends `pending` and, once the server ordered it, applies it.
    async fn send_commit(
        &mut self,
        id: &[u8],
        pending: &group_state::OutgoingCommit,
    ) -> std::result::Result<(), CommitLost> {
        let decode = |h: &str| {
            hex::decode(h).map_err(|e| CommitLost::Other(ClientError::Group(e.to_string())))
        };
        let address = |(username, device_id): &(String, u32)| v1::DeviceAddress {
            username: username.clone(),
            device_id: *device_id,
        };
        let req = v1::CommitRequest {
            group_id: id.to_vec(),
            epoch: pending.epoch,
            message_id: decode(&pending.message_id)?,
            commit: decode(&pending.commit)?,
            welcome: decode(&pending.welcome)?,
            added: pending.added.iter().map(address).collect(),
            removed: pending.removed.iter().map(address).collect(),
        };
        let req = self.authed(req, true).await.map_err(CommitLost::Other)?;
        let answer = self
            .groups_client()
            .await
            .map_err(CommitLost::Other)?
            .commit(req)
            .await;
        let resp = match answer {
            Ok(r) => r.into_inner(),
            Err(s) if epoch_of(&s).is_some() => return Err(CommitLost::Epoch),
            Err(s) => return Err(CommitLost::Other(self.authed_err(&s))),
        };
        let seq = resp.seq;
        let ours = self
            .store
            .write(|db| {
                let mut rec = db
                    .group(id)?
                    .ok_or_else(|| ClientError::Group("the group is gone".into()))?;
                // A late answer: another process on this home may have
                // settled this commit and staged the next one meanwhile.
                let Some(p) = rec
                    .pending_commit
                    .as_mut()
                    .filter(|p| p.message_id == pending.message_id && p.accepted_seq.is_none())
                else {
                    return Ok(false);
                };
                p.accepted_seq = Some(seq);
                db.put_group(&rec)?;
                Ok(true)
            })
            .map_err(CommitLost::Other)?;
        if ours {
            self.merge_when_caught_up().await;
        }
        Ok(())
    }

    /// Applies this device's commits the server accepted, once the messages
    /// ordered before them are processed: receives what is pending (see
    /// [`Client::catch_up`]). If the server cannot be reached, a commit
    /// stays accepted and unmerged until this device has received what came
    /// before it.
    async fn merge_when_caught_up(&mut self) {
        if let Err(e) = self.catch_up().await {
            self.notices.push(format!(
                "the server took the group change; this device applies it once it has received what came before it ({})",
                e.brief()
            ));
        }
    }

    /// Merges this device's accepted commit if it was ordered before `seq`,
    /// in one transaction (another process may have merged it already).
    fn merge_accepted_before(&mut self, id: &[u8], seq: u64) -> Result<()> {
        // Read first: on the path of every group message, and nearly never
        // anything to merge.
        let due = self
            .store
            .db()
            .group(id)?
            .and_then(|g| g.pending_commit)
            .and_then(|p| p.accepted_seq)
            .is_some_and(|s| s < seq);
        if !due {
            return Ok(());
        }
        let me_name = self.username.clone();
        self.store
            .write(|db| merge_accepted_in(db, &me_name, id, seq, None).map(|_| ()))
    }

    /// The commits of this home the server accepted and that are not
    /// merged yet: (group id, commit message id).
    pub(super) fn accepted_commits(&self) -> Result<Vec<(Vec<u8>, String)>> {
        let mut out = Vec::new();
        for rec in self.store.db().groups()? {
            if let Some(p) = rec.pending_commit.filter(|p| p.accepted_seq.is_some())
                && let Ok(id) = hex::decode(&rec.id)
            {
                out.push((id, p.message_id));
            }
        }
        Ok(out)
    }

    /// At the end of a backlog: merges the commits that were accepted
    /// before the stream opened (`accepted`): every message ordered before
    /// them has now been delivered. A commit accepted later may still have
    /// messages before it on their way.
    pub(super) fn merge_accepted(&mut self, accepted: &[(Vec<u8>, String)]) -> Result<()> {
        let me_name = self.username.clone();
        for (id, message_id) in accepted {
            self.store.write(|db| {
                merge_accepted_in(db, &me_name, id, u64::MAX, Some(message_id)).map(|_| ())
            })?;
        }
        Ok(())
    }

    /// Makes a commit adding every device of `add` (accounts) and removing
    /// `remove`, and gets the server to order it, re-basing on a commit that
    /// won the epoch first.
    async fn commit_change(
        &mut self,
        id: &[u8],
        add: &[String],
        remove: &[DeviceName],
    ) -> Result<()> {
        self.settle_pending_commit(id).await?;
        let present: Vec<DeviceName> = self
            .group_members_of(id)?
            .into_iter()
            .filter_map(|(_, d)| d)
            .collect();
        let mut key_packages = Vec::new();
        for account in add {
            // Devices already in the group keep their leaf.
            key_packages.extend(
                self.key_packages_of(account)
                    .await?
                    .into_iter()
                    .filter(|(d, _)| !present.contains(d)),
            );
        }
        if key_packages.is_empty() && remove.is_empty() && !add.is_empty() {
            return Err(ClientError::Group(format!(
                "no device of {} can be added now (none has a KeyPackage on the server)",
                add.join(", ")
            )));
        }
        for attempt in 0..SEND_ATTEMPTS {
            // Another process on this home may have a commit of its own in
            // flight: it goes (or is dropped) first.
            self.settle_pending_commit(id).await?;
            let me_name = self.username.clone();
            let device_id = self.device_id;
            let identity = &self.identity;
            let kps = key_packages.clone();
            let staged = self.store.write(|db| {
                let mut rec = db
                    .group(id)?
                    .ok_or_else(|| ClientError::Group("the group is gone".into()))?;
                if rec.pending_commit.is_some() {
                    return Ok(None);
                }
                let me = Me {
                    username: &me_name,
                    device_id,
                    identity,
                };
                let pending =
                    group_state::stage_commit(db, &me, id, kps, remove).map_err(refusal)?;
                rec.pending_commit = Some(pending.clone());
                db.put_group(&rec)?;
                Ok(Some(pending))
            })?;
            let Some(pending) = staged else {
                continue;
            };
            match self.send_commit(id, &pending).await {
                Ok(()) => return Ok(()),
                Err(CommitLost::Epoch) => {
                    self.store
                        .write(|db| discard_pending(db, id, &pending.message_id))?;
                    if attempt + 1 == SEND_ATTEMPTS {
                        break;
                    }
                    // Merges our other process's commit if it is the one
                    // that won.
                    self.catch_up().await?;
                    if self
                        .store
                        .db()
                        .group(id)?
                        .is_none_or(|g| g.status != GroupStatus::Active)
                    {
                        return Err(ClientError::Group(
                            "this device is no longer in the group".into(),
                        ));
                    }
                }
                Err(CommitLost::Other(e)) => return Err(e),
            }
        }
        Err(ClientError::Group(
            "other members kept changing the group; try again".into(),
        ))
    }

    /// Receives what is pending (messages, group changes) without showing
    /// anything: what arrives is stored for the next `recv`.
    pub(super) async fn catch_up(&mut self) -> Result<()> {
        let accepted = self.accepted_commits()?;
        let mut stream = self.open_stream().await?;
        loop {
            let next = tokio::time::timeout(crate::limits::REQUEST_TIMEOUT, stream.message())
                .await
                .map_err(|_| ClientError::ServerUnreachable {
                    url: self.server.url.clone(),
                    detail: "no answer while receiving".into(),
                })?;
            match next {
                Ok(Some(resp)) => match resp.item {
                    Some(v1::receive_response::Item::Envelope(env)) => {
                        for ev in self.process_envelope(env).await? {
                            if let RecvEvent::Warning(w) = ev {
                                self.notices.push(w);
                            }
                        }
                    }
                    Some(v1::receive_response::Item::GroupMessage(gm)) => {
                        for ev in self.process_group_message(gm).await? {
                            if let RecvEvent::Warning(w) = ev {
                                self.notices.push(w);
                            }
                        }
                    }
                    Some(v1::receive_response::Item::QueueEmpty(_)) => {
                        return self.merge_accepted(&accepted);
                    }
                    None => {}
                },
                Ok(None) => {
                    return Err(ClientError::ConnectionLost {
                        url: self.server.url.clone(),
                        detail: "the server closed the stream".to_owned(),
                    });
                }
                Err(s) => return Err(self.authed_err(&s)),
            }
        }
    }

    /// Sends `text` to the group `name`.
    pub async fn send_group(&mut self, name: &str, text: &str) -> Result<Sent> {
        let rec = self.active_group_named(name)?;
        let id = hex::decode(&rec.id).map_err(|e| ClientError::Group(e.to_string()))?;
        self.settle_pending_commit(&id).await?;
        if text.len() > crate::limits::MAX_TEXT_BYTES {
            return Err(ClientError::Group(format!(
                "a message is at most {} bytes",
                crate::limits::MAX_TEXT_BYTES
            )));
        }
        let mut message_id = [0u8; 16];
        OsRng.fill_bytes(&mut message_id);
        let franking_key = FrankingKey::generate(&mut OsRng);
        let commitment = franking::commit(&franking_key, &message_id, text.as_bytes());
        let sent_at_ms = now_ms();
        let content = v1::Content {
            body: Some(v1::content::Body::Text(v1::TextMessage {
                body: text.to_owned(),
                sent_at_ms,
                quote: None,
                expire_after_secs: 0,
            })),
            franking_key: franking_key.as_bytes().to_vec(),
            ..Default::default()
        };
        let plaintext = Zeroizing::new(content.encode_to_vec());
        for attempt in 0..SEND_ATTEMPTS {
            let me_name = self.username.clone();
            let device_id = self.device_id;
            let identity = &self.identity;
            let (epoch, bytes) = self.store.write(|db| {
                let me = Me {
                    username: &me_name,
                    device_id,
                    identity,
                };
                group_state::encrypt(db, &me, &id, &plaintext, &commitment).map_err(refusal)
            })?;
            let req = self
                .authed(
                    v1::SendGroupMessageRequest {
                        group_id: id.clone(),
                        epoch,
                        message_id: message_id.to_vec(),
                        kind: v1::GroupMessageKind::Application as i32,
                        content: bytes,
                        franking_commitment: commitment.to_vec(),
                        retention_secs: 0,
                    },
                    true,
                )
                .await?;
            match self.groups_client().await?.send_group_message(req).await {
                Ok(r) => {
                    let resp = r.into_inner();
                    let me_name = self.username.clone();
                    self.store.write(|db| {
                        db.add_group_record(
                            GroupRef {
                                id: hex::encode(&id),
                                author: me_name.clone(),
                                event: false,
                            },
                            &message_id,
                            SealedMessage {
                                text: text.to_owned(),
                                franking_key: String::new(),
                                commitment: hex::encode(commitment),
                                tag: String::new(),
                                sender_device: 0,
                            },
                            true,
                            sent_at_ms,
                            resp.server_timestamp_ms,
                            true,
                        )
                    })?;
                    return Ok(Sent {
                        id: hex::encode(message_id),
                        server_timestamp_ms: resp.server_timestamp_ms,
                    });
                }
                Err(s) if epoch_of(&s).is_some() && attempt + 1 < SEND_ATTEMPTS => {
                    self.catch_up().await?;
                    if self
                        .store
                        .db()
                        .group(&id)?
                        .is_none_or(|g| g.status != GroupStatus::Active)
                    {
                        return Err(ClientError::Group(format!(
                            "this device is no longer in {name}"
                        )));
                    }
                }
                Err(s) => return Err(self.authed_err(&s)),
            }
        }
        Err(ClientError::Group(format!(
            "{name} kept changing while sending; try again"
        )))
    }

    /// Acknowledges a group message (and lets its processed mark be pruned
    /// with the others).
    async fn ack_group(&mut self, id: &[u8], seq: u64) -> Result<()> {
        self.acked
            .push((group_conversation(id), 0, seq.to_be_bytes().to_vec()));
        let channel = self.channel().await?;
        let req = self
            .authed(
                v1::AcknowledgeRequest {
                    envelope_ids: Vec::new(),
                    group_acks: vec![v1::GroupAck {
                        group_id: id.to_vec(),
                        seq,
                    }],
                },
                true,
            )
            .await?;
        if let Err(s) = v1::message_service_client::MessageServiceClient::new(channel)
            .acknowledge(req)
            .await
        {
            return Err(self.authed_err(&s));
        }
        Ok(())
    }

    /// Makes sure the device lists of `accounts` are known, so that the
    /// store transaction can check their devices.
    async fn learn_accounts(&mut self, accounts: &[String]) -> Vec<RecvEvent> {
        let mut events = Vec::new();
        for a in accounts {
            if *a == self.username {
                continue;
            }
            if let Err(e) = self.fetch_device_list(a).await {
                events.push(RecvEvent::Warning(format!(
                    "could not check the devices of {a}: {}",
                    e.brief()
                )));
            }
        }
        events
    }

    /// Processes one group message the server delivered, stores what it
    /// changes in one transaction, and acknowledges it. Messages it stores
    /// are shown by [`Client::take_unshown`]; the events are what went
    /// wrong or needs saying.
    pub async fn process_group_message(&mut self, gm: v1::GroupMessage) -> Result<Vec<RecvEvent>> {
        let mut events = Vec::new();
        let id = gm.group_id.clone();
        let kind = v1::GroupMessageKind::try_from(gm.kind).unwrap_or_default();
        let known = self.store.db().group(&id)?;
        let drop = |reason: String| RecvEvent::Dropped {
            sender: gm.sender.clone(),
            reason,
        };
        if kind == v1::GroupMessageKind::Welcome {
            if known.is_some_and(|g| g.status == GroupStatus::Active) {
                self.ack_group(&id, gm.seq).await?;
                return Ok(events);
            }
            // Who is in it, read without joining; then their lists.
            let members = self
                .store
                .write(|db| Ok(group_state::welcome_members(db, &gm.content)))?;
            match members {
                Ok(members) => {
                    let mut accounts: Vec<String> =
                        members.into_iter().map(|d| d.username).collect();
                    accounts.sort();
                    accounts.dedup();
                    events.extend(self.learn_accounts(&accounts).await);
                }
                Err(GroupRefusal::Local(e)) => return Err(e),
                Err(GroupRefusal::Refused(why)) => {
                    events.push(drop(format!("a group invitation was refused: {why}")));
                    self.ack_group(&id, gm.seq).await?;
                    return Ok(events);
                }
            }
            let me_name = self.username.clone();
            let joined = self.store.write(|db| {
                db.savepoint()?;
                match group_state::join(db, &me_name, &gm.content) {
                    Ok(j) => {
                        if j.id != id {
                            db.rollback_to_savepoint()?;
                            return Ok(Err(
                                "the invitation is for another group than the server said"
                                    .to_owned(),
                            ));
                        }
                        db.release_savepoint()?;
                        let name = unique_name(db, &j.name, &hex::encode(&j.id))?;
                        db.put_group(&GroupRecord {
                            id: hex::encode(&j.id),
                            name: name.clone(),
                            joined_ms: now_ms(),
                            status: GroupStatus::Active,
                            pending_commit: None,
                            last_seq: gm.seq,
                        })?;
                        let by = j
                            .added_by
                            .as_ref()
                            .map_or_else(|| "a member".to_owned(), |d| d.username.clone());
                        let text = if j.added_by.as_ref().is_some_and(|d| d.username == me_name) {
                            format!("this device joined {name}")
                        } else {
                            format!("{by} added you to {name}")
                        };
                        group_event(db, &j.id, &by, &text, false)?;
                        Ok(Ok(()))
                    }
                    Err(GroupRefusal::Local(e)) => Err(e),
                    Err(GroupRefusal::Refused(why)) => {
                        db.rollback_to_savepoint()?;
                        Ok(Err(why))
                    }
                }
            })?;
            if let Err(why) = joined {
                events.push(drop(format!("a group invitation was refused: {why}")));
            }
            self.ack_group(&id, gm.seq).await?;
            return Ok(events);
        }
        let conv = group_conversation(&id);
        let seq_id = gm.seq.to_be_bytes();
        if known.is_none_or(|g| g.status != GroupStatus::Active)
            || self.store.db().is_processed(&conv, 0, &seq_id)?
        {
            // Replayed by the server, already processed by another process
            // on this home, or for a group this device no longer follows.
            self.ack_group(&id, gm.seq).await?;
            return Ok(events);
        }
        // A message ordered after this device's accepted commit is of the
        // commit's new epoch: the commit goes first.
        self.merge_accepted_before(&id, gm.seq)?;
        if kind == v1::GroupMessageKind::Commit {
            let accounts = self
                .store
                .write(|db| Ok(group_state::accounts_to_check(db, &id, &gm.content)))?;
            if let Ok(accounts) = accounts {
                events.extend(self.learn_accounts(&accounts).await);
            }
        }
        let me_name = self.username.clone();
        let gm_ref = &gm;
        let outcome = self.store.write(|db| {
            // Another process on this home may have processed it meanwhile.
            let Some(mut rec) = db.group(&id)? else {
                return Ok(None);
            };
            if db.is_processed(&conv, 0, &seq_id)? || rec.status != GroupStatus::Active {
                return Ok(None);
            }
            // MLS refuses a replay by itself (its keys are gone); the mark
            // spares the warning, and a second process the work.
            db.mark_processed(&conv, 0, &seq_id)?;
            // Only a commit is described against the members before it.
            let before = if kind == v1::GroupMessageKind::Commit {
                group_state::read(db, &id, |g| accounts(&group_state::members(g)))
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            db.savepoint()?;
            let result = group_state::process(db, &me_name, &id, &gm_ref.content);
            let mut refused = None;
            let mut leave_proposal = false;
            match result {
                Ok(p) => {
                    db.release_savepoint()?;
                    match store_processed(db, &me_name, &id, gm_ref, &before, p) {
                        Ok(Stored {
                            self_removed,
                            leave,
                        }) => {
                            leave_proposal = leave;
                            if self_removed {
                                rec.status = GroupStatus::Removed;
                            }
                        }
                        Err(why) => refused = Some(why),
                    }
                }
                Err(GroupRefusal::Local(e)) => return Err(e),
                Err(GroupRefusal::Refused(why)) => {
                    db.rollback_to_savepoint()?;
                    if why.contains("withheld") {
                        rec.status = GroupStatus::Stopped(why.clone());
                    }
                    refused = Some(why);
                }
            }
            rec.last_seq = rec.last_seq.max(gm_ref.seq);
            db.put_group(&rec)?;
            if rec.status == GroupStatus::Removed {
                group_state::forget(db, &id).map_err(refusal)?;
            }
            Ok(Some((refused, leave_proposal, rec.name.clone())))
        })?;
        if let Some((refused, leave_proposal, name)) = outcome {
            if let Some(why) = refused {
                events.push(drop(format!(
                    "a message of the group {name} was refused: {why}"
                )));
            }
            if leave_proposal && self.should_commit_leave(&id)? {
                // The lowest remaining leaf commits a member's departure.
                // Boxed: committing may catch up, which processes messages.
                if let Err(e) = Box::pin(self.commit_change(&id, &[], &[])).await {
                    events.push(RecvEvent::Warning(format!(
                        "could not complete a member's leaving of {name}: {}",
                        e.brief()
                    )));
                }
            }
        }
        self.ack_group(&id, gm.seq).await?;
        Ok(events)
    }

    /// Brings this account's devices in every group in line with its signed
    /// device list: a linked device is added (once it has KeyPackages on the
    /// server), a removed one removed. Done once per list version; returns
    /// what it could not do.
    pub async fn sync_own_devices(&mut self) -> Vec<String> {
        let Ok(Some(list)) = self.own_device_list() else {
            return Vec::new();
        };
        let version = list.version();
        if self.store.get_meta_u64(META_GROUPS_SYNCED).ok().flatten() == Some(version) {
            return Vec::new();
        }
        let listed: Vec<u32> = list
            .unverified_list()
            .devices
            .iter()
            .map(|d| d.device_id)
            .collect();
        let groups = match self.store.db().groups() {
            Ok(g) => g,
            Err(e) => return vec![e.brief()],
        };
        let mut notes = Vec::new();
        let mut complete = true;
        for rec in groups
            .into_iter()
            .filter(|g| g.status == GroupStatus::Active)
        {
            let Ok(id) = hex::decode(&rec.id) else {
                continue;
            };
            let Ok(members) = self.group_members_of(&id) else {
                continue;
            };
            let own: Vec<u32> = members
                .iter()
                .filter_map(|(_, d)| d.as_ref())
                .filter(|d| d.username == self.username)
                .map(|d| d.device_id)
                .collect();
            let missing = listed.iter().any(|d| !own.contains(d));
            let gone: Vec<DeviceName> = own
                .iter()
                .filter(|d| !listed.contains(d))
                .map(|d| DeviceName {
                    username: self.username.clone(),
                    device_id: *d,
                })
                .collect();
            if !missing && gone.is_empty() {
                continue;
            }
            let add = if missing {
                vec![self.username.clone()]
            } else {
                Vec::new()
            };
            match self.commit_change(&id, &add, &gone).await {
                Ok(()) => {}
                // A new device that has no KeyPackage yet: next time.
                Err(ClientError::Group(why)) if why.starts_with("no device of") => {
                    complete = false;
                }
                Err(e) => {
                    complete = false;
                    notes.push(format!(
                        "could not bring your devices in {} up to date: {}",
                        rec.name,
                        e.brief()
                    ));
                }
            }
            let still_missing = self
                .group_members_of(&id)
                .map(|m| {
                    listed.iter().any(|l| {
                        !m.iter().any(|(_, d)| {
                            d.as_ref()
                                .is_some_and(|d| d.username == self.username && d.device_id == *l)
                        })
                    })
                })
                .unwrap_or(true);
            if still_missing {
                complete = false;
            }
        }
        if complete && let Err(e) = self.store.set_meta_u64(META_GROUPS_SYNCED, version) {
            notes.push(e.brief());
        }
        notes
    }

    /// Whether this device is the one that commits pending departures: the
    /// lowest leaf that is not leaving.
    fn should_commit_leave(&self, id: &[u8]) -> Result<bool> {
        let db = self.store.db();
        group_state::read(&db, id, |group| {
            let leaving: Vec<openmls::prelude::LeafNodeIndex> = group
                .pending_proposals()
                .filter_map(|p| match p.proposal() {
                    openmls::prelude::Proposal::Remove(r) => Some(r.removed()),
                    _ => None,
                })
                .collect();
            let first = group
                .members()
                .map(|m| m.index)
                .filter(|i| !leaving.contains(i))
                .min();
            first == Some(group.own_leaf_index())
        })
        .map_err(refusal)
    }
}

/// Why a commit did not land.
enum CommitLost {
    /// Another commit won the epoch.
    Epoch,
    Other(ClientError),
}

/// Merges this device's commit the server accepted (`only` that one, by
/// message id), if it was ordered before `seq`, and shows what it changed.
/// Returns whether it merged.
fn merge_accepted_in(
    db: &Db<'_>,
    me_name: &str,
    id: &[u8],
    seq: u64,
    only: Option<&str>,
) -> Result<bool> {
    let Some(mut rec) = db.group(id)? else {
        return Ok(false);
    };
    let Some(pending) = rec
        .pending_commit
        .clone()
        .filter(|p| only.is_none_or(|m| m == p.message_id))
    else {
        return Ok(false);
    };
    let Some(accepted) = pending.accepted_seq.filter(|s| *s < seq) else {
        return Ok(false);
    };
    group_state::merge_own_commit(db, id).map_err(refusal)?;
    rec.pending_commit = None;
    rec.last_seq = rec.last_seq.max(accepted);
    db.put_group(&rec)?;
    let device = |(u, d): &(String, u32)| DeviceName {
        username: u.clone(),
        device_id: *d,
    };
    let added: Vec<DeviceName> = pending.added.iter().map(device).collect();
    let removed: Vec<DeviceName> = pending
        .removed
        .iter()
        .filter(|r| !pending.left.contains(r))
        .map(device)
        .collect();
    let me = DeviceName {
        username: me_name.to_owned(),
        device_id: 0,
    };
    let now_in =
        group_state::read(db, id, |g| accounts(&group_state::members(g))).map_err(refusal)?;
    let before: Vec<String> = now_in
        .iter()
        .filter(|u| !added.iter().any(|d| &d.username == *u) || *u == me_name)
        .cloned()
        .collect();
    for text in describe_commit(me_name, &before, Some(&me), &added, &removed) {
        group_event(db, id, me_name, &text, true)?;
    }
    Ok(true)
}

/// Drops the pending commit `message_id` (hex) the server refused, unless
/// it is no longer the pending one (another process settled it).
fn discard_pending(db: &Db<'_>, id: &[u8], message_id: &str) -> Result<()> {
    let ours = db
        .group(id)?
        .and_then(|g| g.pending_commit)
        .is_some_and(|p| p.message_id == message_id && p.accepted_seq.is_none());
    if ours {
        group_state::discard_own_commit(db, id).map_err(refusal)?;
        clear_pending(db, id)?;
    }
    Ok(())
}

fn clear_pending(db: &Db<'_>, id: &[u8]) -> Result<()> {
    if let Some(mut rec) = db.group(id)? {
        rec.pending_commit = None;
        db.put_group(&rec)?;
    }
    Ok(())
}

/// Records a membership event in a group's conversation.
fn group_event(db: &Db<'_>, id: &[u8], author: &str, text: &str, shown: bool) -> Result<()> {
    let mut message_id = [0u8; 16];
    OsRng.fill_bytes(&mut message_id);
    let now = now_ms();
    db.add_group_record(
        GroupRef {
            id: hex::encode(id),
            author: author.to_owned(),
            event: true,
        },
        &message_id,
        SealedMessage {
            text: text.to_owned(),
            franking_key: String::new(),
            commitment: String::new(),
            tag: String::new(),
            sender_device: 0,
        },
        false,
        now,
        now,
        shown,
    )
}

struct Stored {
    self_removed: bool,
    leave: bool,
}

/// Stores what a processed group message brought (inside its transaction).
fn store_processed(
    db: &Db<'_>,
    me: &str,
    id: &[u8],
    gm: &v1::GroupMessage,
    before: &[String],
    processed: Processed,
) -> std::result::Result<Stored, String> {
    let local = |e: ClientError| e.to_string();
    match processed {
        Processed::Application {
            sender,
            plaintext,
            aad,
        } => {
            if sender.username != gm.sender || sender.device_id != gm.sender_device {
                return Err(format!(
                    "the server says {}/{} sent it, but it was written by {sender}",
                    gm.sender, gm.sender_device
                ));
            }
            if aad != gm.franking_commitment {
                return Err(
                    "its franking commitment is not the one its sender authenticated".into(),
                );
            }
            let (text, franking_key) =
                super::check_content(&plaintext, &gm.message_id, &gm.franking_commitment)?;
            let (sender_clock_ms, _) =
                super::clamp_sender_clock(text.sent_at_ms, gm.server_timestamp_ms);
            db.add_group_record(
                GroupRef {
                    id: hex::encode(id),
                    author: sender.username.clone(),
                    event: false,
                },
                &gm.message_id,
                SealedMessage {
                    text: text.body,
                    franking_key: hex::encode(franking_key.as_bytes()),
                    commitment: hex::encode(&gm.franking_commitment),
                    tag: hex::encode(&gm.franking_tag),
                    sender_device: sender.device_id,
                },
                sender.username == me,
                sender_clock_ms,
                gm.server_timestamp_ms,
                false,
            )
            .map_err(local)?;
            Ok(Stored {
                self_removed: false,
                leave: false,
            })
        }
        Processed::Commit {
            by,
            added,
            removed,
            self_removed,
        } => {
            let author = by.as_ref().map_or_else(String::new, |d| d.username.clone());
            for text in describe_commit(me, before, by.as_ref(), &added, &removed) {
                group_event(db, id, &author, &text, false).map_err(local)?;
            }
            Ok(Stored {
                self_removed,
                leave: false,
            })
        }
        Processed::Proposal { by } => {
            let author = by.as_ref().map_or_else(String::new, |d| d.username.clone());
            let text = match &by {
                Some(d) if d.username == me => format!("your device {} left", d.device_id),
                Some(d) => format!("{} left", d.username),
                None => "a member left".to_owned(),
            };
            group_event(db, id, &author, &text, false).map_err(local)?;
            Ok(Stored {
                self_removed: false,
                leave: true,
            })
        }
    }
}
