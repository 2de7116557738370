//! The stored conversation and abuse reports with their franking proofs.

use missive_proto::v1::{self, report_service_client::ReportServiceClient};
use tonic::Code;
use zeroize::Zeroizing;

use crate::display::sanitize_line;
use crate::error::{ClientError, Result};
use crate::store::HistoryEntry;

use super::{Client, normalize_username};

impl Client {
    // ---- history, reports, deletion -----------------------------------

    /// The conversation with `username`, oldest first (quarantined messages
    /// from a changed identity are not part of it).
    pub fn history(&self, username: &str) -> Result<Vec<HistoryEntry>> {
        let (username, _) = self.known_contact(username)?;
        self.store.history(&username)
    }

    /// Reports the received message `message_id_hex` (from `from`, needed
    /// when two senders used that id) to the server's moderators with its
    /// franking proof. Returns the report id (of the original, when the
    /// message was edited: see [`Client::report_versions`]).
    pub async fn report(
        &mut self,
        message_id_hex: &str,
        from: Option<&str>,
        reason: &str,
    ) -> Result<u64> {
        let ids = self.report_versions(message_id_hex, from, reason).await?;
        ids.first()
            .copied()
            .ok_or_else(|| ClientError::UnknownMessage(sanitize_line(message_id_hex)))
    }

    /// Reports the received message `message_id_hex` and, when it was
    /// edited, each of its edits (each with its own franking proof), so the
    /// moderators see and can verify its whole edit history. Returns the
    /// report ids, the original's first.
    pub async fn report_versions(
        &mut self,
        message_id_hex: &str,
        from: Option<&str>,
        reason: &str,
    ) -> Result<Vec<u64>> {
        let unknown = || ClientError::UnknownMessage(sanitize_line(message_id_hex));
        let id = hex::decode(message_id_hex.trim()).map_err(|_| unknown())?;
        let from = from.map(normalize_username).transpose()?;
        // Original first, then its edits, each with its franked plaintext.
        let mut found =
            crate::conversation::report_material(&self.store.db(), &id, from.as_deref())?;
        if found.len() > 1 {
            let senders: Vec<String> = found
                .iter()
                .filter_map(|v| v.first().map(|m| m.sender.clone()))
                .collect();
            return Err(ClientError::AmbiguousMessage {
                id: message_id_hex.trim().to_owned(),
                senders: senders.join(", "),
            });
        }
        let versions = found.pop().ok_or_else(unknown)?;
        if let Some(original) = versions.first() {
            let mark = report_mark(original);
            if reported_marks(&self.store.get_meta(META_REPORTED)?).contains(&mark) {
                return Err(ClientError::AlreadyReported(hex::encode(
                    &original.message_id,
                )));
            }
        }
        let mut ids = Vec::with_capacity(versions.len());
        for m in &versions {
            ids.push(self.send_report(m, reason, message_id_hex).await?);
        }
        Ok(ids)
    }

    pub(super) async fn send_report(
        &mut self,
        m: &crate::store::ReportMaterial,
        reason: &str,
        message_id_hex: &str,
    ) -> Result<u64> {
        let unknown = || ClientError::UnknownMessage(sanitize_line(message_id_hex));
        let mark = report_mark(m);
        let hexd = |s: &str| hex::decode(s).map_err(|_| unknown());
        let franking_key = Zeroizing::new(hexd(&m.sealed.franking_key)?);
        let req = self
            .authed(
                v1::ReportRequest {
                    message_id: m.message_id.clone(),
                    sender: m.sender.clone(),
                    server_timestamp_ms: m.server_ts_ms,
                    plaintext: m.sealed.text.as_bytes().to_vec(),
                    franking_key: franking_key.to_vec(),
                    franking_commitment: hexd(&m.sealed.commitment)?,
                    franking_tag: hexd(&m.sealed.tag)?,
                    reason: reason.chars().take(1000).collect(),
                    attachment: m.attachment.clone(),
                    group_id: m.group_id.clone(),
                },
                true,
            )
            .await?;
        let channel = self.channel().await?;
        match ReportServiceClient::new(channel).report(req).await {
            Ok(r) => {
                // Remembered (sealed, in one write transaction) so a second
                // report of the same message is refused locally.
                self.store.write(|db| {
                    let mut marks = reported_marks(&db.get_meta(META_REPORTED)?);
                    marks.push(mark.clone());
                    let json = serde_json::to_vec(&marks)
                        .map_err(|e| ClientError::Crypto(format!("cannot encode reports: {e}")))?;
                    db.set_meta(META_REPORTED, &json)
                })?;
                Ok(r.into_inner().report_id)
            }
            Err(s) if s.code() == Code::InvalidArgument => Err(ClientError::Server(format!(
                "the report was refused: {}",
                sanitize_line(s.message())
            ))),
            Err(s) => Err(self.authed_err(&s)),
        }
    }
}

/// Meta key of the messages this account reported: a sealed JSON list of
/// `sender/message-id-hex`.
pub(super) const META_REPORTED: &str = "reported_messages";

pub(super) fn report_mark(m: &crate::store::ReportMaterial) -> String {
    format!("{}/{}", m.sender, hex::encode(&m.message_id))
}

pub(super) fn reported_marks(value: &Option<Zeroizing<Vec<u8>>>) -> Vec<String> {
    value
        .as_ref()
        .and_then(|v| serde_json::from_slice(v).ok())
        .unwrap_or_default()
}
